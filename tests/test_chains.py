"""The chains in references/chains-*.md run, command by command, against the sandbox portal.

Each ``## N. Title`` section is one user scenario (skill-brief.md numbers them 1-26; 27-30 are
the commerce, platform, sites and compliance packs' own). Its steps
are the ``python3 scripts/...`` lines of its ``bash`` blocks, run exactly as written (from the
skill folder, one process per step) after filling ``$NAME`` placeholders: inputs the section
lists under ``Inputs:`` come from the scenario's SETUP here, other names from an earlier step's
``# -> $NAME = path`` capture. Every step must exit 0 without a traceback or a leaked secret,
every capture must exist, and CHECKS then verify on the portal that the scenario did its job.
Every method a chain calls is one the sandbox serves (no step is skipped).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from b24agent.sandbox import methods  # noqa: F401  (registers every handler)
from b24agent.sandbox.registry import all_methods
from conftest import ROOT, Sandbox, launch

SKILL = ROOT / "skills" / "bitrix24-agent"
REFS = SKILL / "references"
SCENARIOS = range(1, 31)
STEP_TIMEOUT_S = 60
#: Sandboxes running chains side by side; steps are mostly process start-up, so 3 keep 2 cores busy.
WORKERS = 3


HEADING = re.compile(r"^## (\d+)\. (.+)$")
PLACEHOLDER = re.compile(r"\$([A-Z][A-Z0-9_]*)")
CAPTURE = re.compile(r"^# -> \$([A-Z][A-Z0-9_]*) = (\S+)$")
COMMAND_PREFIX = "python3 scripts/"


@dataclass
class Step:
    command: str
    captures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Chain:
    source: str
    scenario: int
    title: str
    oauth: bool = False
    inputs: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def parse_chains(path: Path) -> list[Chain]:
    """The sections of one chains file with their steps, inputs and auth."""
    chains: list[Chain] = []
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading:
            chains.append(Chain(path.name, int(heading.group(1)), heading.group(2)))
            continue
        if not chains:
            continue
        chain = chains[-1]
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code and line.startswith(COMMAND_PREFIX):
            chain.steps.append(Step(line))
        elif in_code and line.startswith("# ->"):
            capture = CAPTURE.match(line)
            assert capture and chain.steps, f"{path.name} #{chain.scenario}: bad capture {line!r}"
            chain.steps[-1].captures.append((capture.group(1), capture.group(2)))
        elif not in_code and line.startswith("Inputs:"):
            chain.inputs += PLACEHOLDER.findall(line)
        elif not in_code and line.startswith("Auth: OAuth"):
            chain.oauth = True
    return chains


ALL_CHAINS = [c for path in sorted(REFS.glob("chains-*.md")) for c in parse_chains(path)]
BY_SCENARIO = {c.scenario: c for c in ALL_CHAINS}


# --- running ---------------------------------------------------------------------------------


@dataclass
class Ran:
    command: str
    code: int
    out: str
    err: str
    data: Any


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _parse(out: str) -> Any:
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        lines = [line for line in out.splitlines() if line.strip()]
        return [json.loads(line) for line in lines]


class Runner:
    """Runs chain commands as subprocesses with the sandbox's credentials in the environment."""

    def __init__(self, portal: Sandbox, tmp_path: Path, oauth: bool) -> None:
        self.portal = portal
        self.state = tmp_path / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
        env.update(
            HOME=str(tmp_path),
            B24_STATE_DIR=str(self.state),
            B24_RETRY_BASE_SEC="0.01",
            B24_RETRY_MAX_SEC="0.05",
        )
        if oauth:
            keys = ("client_id", "client_secret", "access_token", "refresh_token")
            env.update({f"B24_{k.upper()}": portal.oauth[k] for k in keys})
            env.update(
                B24_AUTH_MODE="oauth",
                B24_DOMAIN=portal.url,
                B24_OAUTH_SERVER=portal.oauth["server"],
                B24_APPLICATION_TOKEN=portal.oauth["application_token"],
            )
        else:
            env["B24_WEBHOOK_URL"] = portal.webhook_url
        self.env = env
        assert not (SKILL / ".env").exists(), "a .env in the skill folder would reach every step"
        tokens = ("client_secret", "access_token", "refresh_token", "application_token")
        self.secrets = [portal.webhook["code"], *(portal.oauth[k] for k in tokens)]

    def run(self, args: list[str]) -> Ran:
        """One command as an agent runs it: ``python3 scripts/X.py ...`` from the skill folder."""
        assert args[:1] == ["python3"] and args[1].startswith("scripts/"), args
        script = SKILL / args[1]
        assert script.is_file(), f"{args[1]} does not exist in the skill folder"
        proc = subprocess.run(
            [sys.executable, str(script), *args[2:]],
            cwd=SKILL,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        shown = shlex.join(args)
        assert "Traceback" not in proc.stderr, f"{shown}\n{proc.stderr}"
        for secret in self.secrets:
            assert secret not in proc.stdout + proc.stderr, f"secret leaked by {shown}"
        data = _parse(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None
        return Ran(shown, proc.returncode, proc.stdout, proc.stderr, data)


def _fill(command: str, values: dict[str, Any], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"{where}: ${name} is neither an input nor captured earlier"
        return str(values[name])

    return PLACEHOLDER.sub(value, command)


#: Client flags that take a value (the METHOD positional is the first other bare word).
_VALUED = {"--params", "--packs", "--idempotency-key", "--output", "--limit", "--method-allowlist"}


def _method_of(args: list[str]) -> str | None:
    """The METHOD a client command calls (None for --explain, --execute-plan, the worker)."""
    rest = args[2:]
    if args[1] != "scripts/bitrix24_client.py" or any(
        a.split("=")[0] in ("--explain", "--execute-plan") for a in rest
    ):
        return None
    values = {i + 1 for i, arg in enumerate(rest) if arg in _VALUED}
    return next((a for i, a in enumerate(rest) if i not in values and a[:1] != "-"), None)


def run_chain(chain: Chain, runner: Runner, inputs: dict[str, Any]) -> tuple[dict, list[Ran]]:
    where = f"{chain.source} #{chain.scenario}"
    given = sorted(k for k in inputs if not k.startswith("_"))  # "_X": kept for the checks only
    assert given == sorted(chain.inputs), f"{where}: SETUP must give {chain.inputs}"
    values = dict(inputs)
    runs: list[Ran] = []
    for number, step in enumerate(chain.steps, start=1):
        here = f"{where} step {number}"
        args = shlex.split(_fill(step.command, values, here))
        ran = runner.run(args)
        assert ran.code == 0, f"{here}: exit {ran.code}\n{ran.command}\n{ran.err}"
        for name, path in step.captures:
            try:
                values[name] = _dig(ran.data, path)
            except (KeyError, IndexError, TypeError, ValueError):
                pytest.fail(f"{here}: no {path} in the output of\n{ran.command}\n{ran.out[:2000]}")
        runs.append(ran)
    return values, runs


# --- scenario set-up and end-state checks ----------------------------------------------------


def rest(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> Any:
    body = portal.rest(method, params or {}).json()
    assert "error" not in body, (method, body)
    return body["result"]


def _iso(moment: datetime) -> str:
    return moment.astimezone().isoformat(timespec="seconds")


def _lead(portal: Sandbox, **fields: Any) -> int:
    return int(rest(portal, "crm.lead.add", {"fields": fields}))


def _deal(portal: Sandbox, **fields: Any) -> int:
    return int(rest(portal, "crm.deal.add", {"fields": fields}))


def _task(portal: Sandbox, **fields: Any) -> int:
    return int(rest(portal, "tasks.task.add", {"fields": fields})["task"]["id"])


def _docs(portal: Sandbox, kind: str) -> list[dict[str, Any]]:
    return portal.admin("docs", {"kind": kind})["docs"]


def _messages(portal: Sandbox, dialog: str) -> list[dict[str, Any]]:
    return portal.admin("messages", {"dialog_id": dialog})["messages"]


FILE = b"%PDF-1.4\n% sandbox quote v3\n"
#: The product catalog's iblockId on a fresh portal (and in the sandbox).
CATALOG = 14


def _setup_7(portal: Sandbox) -> dict[str, Any]:
    _deal(portal, TITLE="Won already", STAGE_ID="WON")
    covered, forgotten = _deal(portal, TITLE="Covered"), _deal(portal, TITLE="Forgotten")
    _task(portal, TITLE="Follow up", RESPONSIBLE_ID=2, UF_CRM_TASK=[f"D_{covered}"])
    return {"_COVERED": covered, "_FORGOTTEN": forgotten}


def _setup_8(portal: Sandbox) -> dict[str, Any]:
    deal = _deal(portal, TITLE="Called")
    fields = {
        "OWNER_TYPE_ID": 2,
        "OWNER_ID": deal,
        "TYPE_ID": 2,
        "SUBJECT": "Call with Anna",
        "RESPONSIBLE_ID": 1,
        "COMMUNICATIONS": [{"VALUE": "+49301234567", "ENTITY_TYPE_ID": 3, "ENTITY_ID": 1}],
    }
    return {"DEAL_ID": deal, "_CALL": int(rest(portal, "crm.activity.add", {"fields": fields}))}


def _setup_27(portal: Sandbox) -> dict[str, Any]:
    product = {"iblockId": CATALOG, "name": "Annual licence (seat)"}
    added = rest(portal, "catalog.product.add", {"fields": product})["element"]["id"]
    return {"DEAL_ID": _deal(portal, TITLE="Licences"), "CATALOG_ID": CATALOG, "_PRODUCT": added}


def _setup_12(portal: Sandbox) -> dict[str, Any]:
    now = datetime.now()
    late = _task(portal, TITLE="Overdue", RESPONSIBLE_ID=3, DEADLINE=_iso(now - timedelta(days=1)))
    _task(portal, TITLE="Fine", RESPONSIBLE_ID=4, DEADLINE=_iso(now + timedelta(days=3)))
    return {"NOW": _iso(now), "_LATE": late}


def _setup_16(portal: Sandbox) -> dict[str, Any]:
    old = int(rest(portal, "crm.contact.add", {"fields": {"NAME": "Old", "LAST_NAME": "Contact"}}))
    other = int(rest(portal, "crm.contact.add", {"fields": {"NAME": "Mark", "LAST_NAME": "Li"}}))
    deal = _deal(portal, TITLE="Synced deal", CONTACT_IDS=[old])
    return {"DEAL_ID": deal, "OTHER_CONTACT_ID": other}


def _setup_18(portal: Sandbox) -> dict[str, Any]:
    for n in range(3):
        _lead(portal, TITLE=f"TEST lead {n}")
    return {"_KEEPER": _lead(portal, TITLE="Real customer")}


def _setup_26(portal: Sandbox) -> dict[str, Any]:
    scrum = int(rest(portal, "sonet_group.create", {"NAME": "Shop scrum", "SCRUM_MASTER_ID": 2}))
    sprint = rest(
        portal, "tasks.api.scrum.sprint.add", {"fields": {"groupId": scrum, "name": "S7"}}
    )
    rest(portal, "tasks.api.scrum.sprint.start", {"id": sprint["id"]})
    return {"SCRUM_ID": scrum}


def _scored_leads(portal: Sandbox) -> dict[str, Any]:
    ids = {
        f"_SCORE_{score}": _lead(
            portal, TITLE=f"Score {score}", UF_CRM_SCORE=score, ASSIGNED_BY_ID=user
        )
        for score, user in ((85, 3), (92, 2), (40, 2))
    }
    return {"DUE": _iso(datetime.now() + timedelta(days=1)), **ids}


#: Scenario -> what the portal holds before the chain runs and the chain's inputs ("_" keys are
#: for the checks only).
SETUP: dict[int, Callable[[Sandbox], dict[str, Any]]] = {
    1: lambda p: {},
    2: lambda p: {
        "LEAD_ID": _lead(
            p,
            TITLE="Raw form lead",
            PHONE=[{"VALUE": "+49 30 1234567", "VALUE_TYPE": "WORK"}],
            EMAIL=[{"VALUE": " Anna.Weber@Example.COM ", "VALUE_TYPE": "WORK"}],
        )
    },
    3: _scored_leads,
    4: lambda p: {"LEAD_ID": _lead(p, TITLE="Qualified", ASSIGNED_BY_ID=3)},
    5: lambda p: {"DEAL_ID": _deal(p, TITLE="Moving", ASSIGNED_BY_ID=2)},
    # The sandbox cannot age a deal, so "stuck since" is a moment just ahead.
    6: lambda p: {
        "STUCK_BEFORE": _iso(datetime.now() + timedelta(minutes=5)),
        "_DEAL": _deal(p, TITLE="Stuck", STAGE_ID="PREPARATION", ASSIGNED_BY_ID=3),
    },
    7: _setup_7,
    8: _setup_8,
    9: lambda p: {"START": "2030-03-20 15:00:00", "END": "2030-03-20 16:00:00"},
    10: lambda p: {"TASK_ID": _task(p, TITLE="Launch", RESPONSIBLE_ID=2)},
    11: lambda p: {},
    12: _setup_12,
    13: lambda p: {},
    14: lambda p: {"EXISTING_TASK_ID": _task(p, TITLE="Old homepage audit", RESPONSIBLE_ID=3)},
    15: lambda p: {"DEAL_ID": _deal(p, TITLE="Needs approval")},
    16: _setup_16,
    17: lambda p: {
        "SINCE": "2000-01-01T00:00:00+00:00",
        "_SEEDED": p.admin("seed", {"crm.deal": 120, "crm.lead": 30}),
    },
    18: _setup_18,
    19: lambda p: {},
    20: lambda p: {"DEAL_ID": _deal(p, TITLE="Watched")},
    21: lambda p: {},
    22: lambda p: {
        "TASK_ID": _task(p, TITLE="Watched task", RESPONSIBLE_ID=2),
        "CHAT_ID": int(rest(p, "im.chat.add", {"TITLE": "Task feed", "USERS": [2]})),
    },
    23: lambda p: {"BOT_TOKEN": "chain-test-bot-token"},
    24: lambda p: {"GROUP_ID": int(rest(p, "sonet_group.create", {"NAME": "Support team"}))},
    25: lambda p: {
        "TASK_ID": _task(p, TITLE="Send quote", RESPONSIBLE_ID=2),
        "DEAL_ID": _deal(p, TITLE="Quoted"),
        "FILE_B64": base64.b64encode(FILE).decode(),
    },
    26: _setup_26,
    27: _setup_27,
    28: lambda p: {"SYNC_MARK": "2030-03-01T00:00:00"},
    29: lambda p: {},
    30: lambda p: {"VISITOR_IP": "203.0.113.7", "SUBMISSION_ID": "sub-8841"},
}


@dataclass
class Done:
    """A chain that ran: the portal, its values (inputs and captures) and each step's run."""

    portal: Sandbox
    values: dict[str, Any]
    runs: list[Ran]
    runner: Runner

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def rest(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return rest(self.portal, method, params)

    def out(self, step: int) -> Any:
        """The parsed output of step ``step`` (1-based; negative counts from the end)."""
        return self.runs[step - 1 if step > 0 else step].data


def _check_1(d: Done) -> None:
    leads = d.rest("crm.lead.list", {"filter": {"ORIGIN_ID": "submission-8841"}, "select": ["*"]})
    assert len(leads) == 1 and d["SAME_LEAD_ID"] == d["LEAD_ID"] == int(leads[0]["ID"])
    assert (leads[0]["SOURCE_ID"], leads[0]["ORIGINATOR_ID"]) == ("WEB", "webform")
    assert d.out(3)["result"]["UTM_SOURCE"] == "google"


def _check_2(d: Done) -> None:
    lead = d.rest("crm.lead.get", {"id": d["LEAD_ID"]})
    assert [x["VALUE"] for x in lead["PHONE"]] == ["+49301234567"]
    assert [x["VALUE"] for x in lead["EMAIL"]] == ["anna.weber@example.com"]
    assert d.out(2)["result"] == {"LEAD": [d["LEAD_ID"]]}


def _check_3(d: Done) -> None:
    assert int(d["LEAD_ID"]) == d["_SCORE_92"]
    task = d.rest("tasks.task.get", {"taskId": d["TASK_ID"]})["task"]
    assert task["ufCrmTask"] == [f"L_{d['_SCORE_92']}"]
    assert (task["priority"], task["responsibleId"]) == ("2", "2")


def _check_4(d: Done) -> None:
    deal = d.rest("crm.deal.get", {"id": d["DEAL_ID"]})
    assert (deal["LEAD_ID"], deal["ASSIGNED_BY_ID"]) == (str(d["LEAD_ID"]), "3")
    assert d.rest("crm.lead.get", {"id": d["LEAD_ID"]})["STATUS_ID"] == "CONVERTED"


def _check_5(d: Done) -> None:
    assert d.rest("crm.deal.get", {"id": d["DEAL_ID"]})["STAGE_ID"] == "PREPARATION"
    (note,) = _docs(d.portal, "notify")
    assert note["USER_ID"] == 2 and f"#{d['DEAL_ID']}" in note["MESSAGE"]


def _check_6(d: Done) -> None:
    assert int(d["DEAL_ID"]) == d["_DEAL"] and d.out(2)["result"]["tasks"] == []
    filter_ = {"UF_CRM_TASK": f"D_{d['DEAL_ID']}"}
    (task,) = d.rest("tasks.task.list", {"filter": filter_})["tasks"]
    assert (task["responsibleId"], task["auditors"]) == ("3", ["1"])


def _check_7(d: Done) -> None:
    open_deals = {int(x["ID"]) for x in d.out(1)["result"]}
    linked = {c for t in d.out(2)["result"]["tasks"] for c in t["ufCrmTask"]}
    assert open_deals == {d["_COVERED"], d["_FORGOTTEN"]}
    assert {x for x in open_deals if f"D_{x}" not in linked} == {d["_FORGOTTEN"]}


def _check_8(d: Done) -> None:
    (call,) = d.out(1)["result"]
    assert int(call["ID"]) == d["_CALL"] and call["FILES"] == []
    comments = d.out(-1)["result"]
    assert [int(c["ID"]) for c in comments] == [d["COMMENT_ID"]]
    assert comments[0]["COMMENT"].startswith("AI call summary")


def _check_9(d: Done) -> None:
    event = d.rest("calendar.event.getbyid", {"id": d["EVENT_ID"]})
    assert event["ATTENDEES_CODES"] == ["U1", "U2", "U3"] and event["IS_MEETING"] is True
    assert event["REMIND"] == [{"type": "min", "count": 30}, {"type": "day", "count": 1}]
    assert event["TZ_FROM"] == "Europe/Berlin" and event["DT_LENGTH"] == 3600


def _check_10(d: Done) -> None:
    items = d.rest("task.checklistitem.getlist", {"TASKID": d["TASK_ID"]})
    under = {i["TITLE"]: i for i in items if i["PARENT_ID"] == str(d["LIST_ID"])}
    assert sorted(under) == ["Legal review", "Prepare the pricing sheet"]
    members = [(m["ID"], m["TYPE"]) for m in under["Legal review"]["MEMBERS"]]
    assert members == [("3", "A"), ("4", "U")]
    task = d.rest("tasks.task.get", {"taskId": d["TASK_ID"]})["task"]
    assert (task["accomplices"], task["auditors"]) == (["3"], ["4"])


def _check_11(d: Done) -> None:
    (message,) = _messages(d.portal, f"chat{d['CHAT_ID']}")
    assert "Kickoff" in message["text"] and d.out(-1)["result"] == [1, 2, 3, 4]


def _check_12(d: Done) -> None:
    assert [int(t["id"]) for t in d.out(1)["result"]["tasks"]] == [d["_LATE"]]
    (note,) = _docs(d.portal, "notify")
    assert (note["USER_ID"], note["TAG"]) == (3, f"sla-task-{d['_LATE']}")


def _check_13(d: Done) -> None:
    (post,) = d.rest("log.blogpost.get", {"POST_ID": d["POST_ID"]})
    assert post["TITLE"] == "Release 2.4 is live" and post["HAS_SOCNET_ALL"] == "Y"


def _check_14(d: Done) -> None:
    tasks = d.rest("tasks.task.list", {"filter": {"GROUP_ID": d["GROUP_ID"]}})["tasks"]
    assert sorted(int(t["id"]) for t in tasks) == sorted([int(d["TASK_ID"]), d["EXISTING_TASK_ID"]])


def _check_15(d: Done) -> None:
    assert d.out(2)["result"] == []
    (running,) = d.out(-1)["result"]
    assert running["ID"] == d["WORKFLOW_ID"] and running["DOCUMENT_ID"] == f"DEAL_{d['DEAL_ID']}"


def _check_16(d: Done) -> None:
    links = d.rest("crm.deal.contact.items.get", {"id": d["DEAL_ID"]})
    shown = [(x["CONTACT_ID"], x["IS_PRIMARY"]) for x in links]
    assert shown == [(d["CONTACT_ID"], "Y"), (d["OTHER_CONTACT_ID"], "N")]
    assert d.rest("crm.deal.get", {"id": d["DEAL_ID"]})["CONTACT_ID"] == str(d["CONTACT_ID"])


def _check_17(d: Done) -> None:
    deals = d.out(1)
    assert len(deals) == 120 and len({x["ID"] for x in deals}) == 120
    assert len(d.out(2)) == 30


def _check_18(d: Done) -> None:
    assert d.out(-1)["result"] == []
    remaining = d.rest("crm.lead.list", {"select": ["ID"]})
    assert [int(x["ID"]) for x in remaining] == [d["_KEEPER"]]


def _check_19(d: Done) -> None:
    explained = [e["method"] for e in d.out(1)]
    assert explained[1:3] == ["im.notify.system.add", "tasks.api.scrum.task.update"]
    assert {"crm", "task", "im"} <= set(d.out(2)["result"]) and d["AVAILABLE"] is True


def _peek_queue(d: Done, connector: str) -> list[Any]:
    """What still waits in the offline queue of ``connector`` (read without reserving)."""
    params = json.dumps({"auth_connector": connector})
    peek = ["python3", "scripts/bitrix24_client.py", "event.offline.list", "--params", params]
    left = d.runner.run(peek)
    assert left.code == 0, left.err
    return left.data["result"]


def _check_20(d: Done) -> None:
    (inbox,) = d.runner.state.rglob("inbox.jsonl")
    events = [json.loads(line) for line in inbox.read_text().splitlines()]
    assert [e["event_name"] for e in events] == ["ONCRMDEALUPDATE"]
    assert str(events[0]["event"]["EVENT_DATA"]["FIELDS"]["ID"]) == str(d["DEAL_ID"])
    assert _peek_queue(d, "bi-sync") == []


def _check_21(d: Done) -> None:
    (running,) = d.rest("bizproc.workflow.instances", {"SELECT": ["DOCUMENT_ID"]})
    assert running["DOCUMENT_ID"] == f"DEAL_{d['DEAL_ID']}"
    assert _peek_queue(d, "bp-trigger") == []


def _check_22(d: Done) -> None:
    assert int(d["CHANGED_TASK_ID"]) == d["TASK_ID"]
    (post,) = _messages(d.portal, f"chat{d['CHAT_ID']}")
    assert f"Task #{d['TASK_ID']} changed" in post["text"]
    assert _peek_queue(d, "task-feed") == []


def _check_23(d: Done) -> None:
    (answer,) = _messages(d.portal, "1")
    assert answer["author_id"] == d["BOT_ID"] and answer["text"].startswith("Deal 42")
    assert d.out(-1)["result"]["events"] == []


def _check_24(d: Done) -> None:
    members = d.rest("sonet_group.user.get", {"ID": d["GROUP_ID"]})
    assert {m["USER_ID"]: m["ROLE"] for m in members} == {"1": "A", "2": "E", "3": "K"}


def _check_25(d: Done) -> None:
    task = d.rest("tasks.task.get", {"taskId": d["TASK_ID"], "select": ["UF_TASK_WEBDAV_FILES"]})
    assert len(task["task"]["UF_TASK_WEBDAV_FILES"]) == 1
    filter_ = {"ENTITY_TYPE": "deal", "ENTITY_ID": d["DEAL_ID"]}
    (comment,) = d.rest("crm.timeline.comment.list", {"filter": filter_})
    files = [(f["name"], f["size"]) for f in comment["FILES"].values()]
    assert files == [("quote-v3.pdf", len(FILE))]


def _check_26(d: Done) -> None:
    task = d.rest("tasks.task.get", {"taskId": d["TASK_ID"], "select": ["STAGE_ID"]})["task"]
    assert task["stageId"] == str(d["STAGE_ID"])
    assert d.out(-1)["result"]["entityId"] == d["SPRINT_ID"]
    assert d.out(-1)["result"]["storyPoints"] == "3"


def _check_27(d: Done) -> None:
    assert d["PRODUCT_ID"] == d["_PRODUCT"]
    (row,) = d.out(-1)["result"]["productRows"]
    assert row["id"] == d["ROW_ID"] and row["productName"] == "Annual licence (seat)"
    assert (row["quantity"], row["price"], row["discountRate"]) == (20, 90, 10)


def _check_28(d: Done) -> None:
    (item,) = d.out(-1)["result"]
    assert int(item["ID"]) == d["ITEM_ID"] and item["NAME"] == f"deals:{d['SYNC_MARK']}"


def _check_29(d: Done) -> None:
    page = {"params": {"filter": {"ID": d["PAGE_ID"]}, "select": ["ACTIVE"]}}
    assert d.rest("landing.landing.getList", page) == [{"ACTIVE": "Y"}]
    assert d.out(-1)["result"].endswith("/spring-sale/")


def _check_30(d: Done) -> None:
    (consent,) = _docs(d.portal, "user_consent")
    assert consent["ID"] == d["CONSENT_ID"] and consent["AGREEMENT_ID"] == int(d["AGREEMENT_ID"])
    assert (consent["IP"], consent["ORIGINATOR_ID"]) == ("203.0.113.7", "sub-8841")


CHECKS: dict[int, Callable[[Done], None]] = {n: globals()[f"_check_{n}"] for n in SCENARIOS}


# --- the tests -------------------------------------------------------------------------------


def test_every_scenario_has_exactly_one_chain() -> None:
    numbers = sorted(c.scenario for c in ALL_CHAINS)
    assert numbers == list(SCENARIOS), numbers
    for chain in ALL_CHAINS:
        assert chain.steps, f"{chain.source} #{chain.scenario} has no steps"
        assert chain.source == f"chains-{chain.source[7:-3]}.md"


def test_every_method_a_chain_calls_is_served_by_the_sandbox() -> None:
    served = {spec.name for spec in all_methods()}
    called = {
        method
        for chain in ALL_CHAINS
        for step in chain.steps
        if (method := _method_of(shlex.split(step.command)))
    }
    assert len(called) > 60
    assert sorted(m for m in called if m.lower() not in served) == []


def execute(portal: Sandbox, scenario: int, tmp_path: Path) -> Done:
    """Set the portal up for ``scenario``, run its chain, check the end state."""
    portal.admin("reset")
    chain = BY_SCENARIO[scenario]
    inputs = SETUP[scenario](portal)
    runner = Runner(portal, tmp_path, chain.oauth)
    values, runs = run_chain(chain, runner, inputs)
    done = Done(portal, values, runs, runner)
    CHECKS[scenario](done)
    return done


@pytest.fixture(scope="module")
def chain_outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, Done | BaseException]:
    """Every selected chain, run on WORKERS sandboxes at once (each step is a process of its
    own, so the chains together would take a minute one after another). A failure is kept and
    re-raised by that chain's own test."""
    selected = sorted(
        {
            item.callspec.params["scenario"]
            for item in request.session.items
            if item.module is sys.modules[__name__] and hasattr(item, "callspec")
        }
    )
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for scenario in selected:
        pending.put(scenario)
    outcomes: dict[int, Done | BaseException] = {}

    def work() -> None:
        sandbox = launch("--plan", "unlimited")
        try:
            while True:
                try:
                    scenario = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    folder = tmp_path_factory.mktemp(f"chain{scenario}")
                    outcomes[scenario] = execute(sandbox, scenario, folder)
                except BaseException as exc:  # kept for the chain's own test to raise
                    outcomes[scenario] = exc
        finally:
            sandbox.stop()

    with ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(work) for _ in range(min(WORKERS, len(selected)))]:
            future.result()
    return outcomes


@pytest.mark.parametrize(
    "scenario", [c.scenario for c in ALL_CHAINS], ids=lambda n: f"{BY_SCENARIO[n].source}#{n}"
)
def test_chain_runs_against_the_sandbox(
    chain_outcomes: dict[int, Done | BaseException], scenario: int
) -> None:
    outcome = chain_outcomes[scenario]
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome.runs and len(outcome.runs) == len(BY_SCENARIO[scenario].steps)
