"""The safety layer end to end: CLI subprocesses against the sandbox portal over real HTTP.

Idempotency races and reconciliation, every plan refusal, the audit chain through
``--verify-audit``, policy refusals from the command line, and a secrets sweep over every output
and every state file for webhook and OAuth runs.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli_support import Cli
from client_support import oauth_env
from conftest import Sandbox


def webhook_cli(portal: Sandbox, tmp_path: Path, **env: str) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, **env})


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return webhook_cli(portal, tmp_path)


def _params(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def _leads(portal: Sandbox, **filter_: Any) -> list[dict[str, Any]]:
    body = portal.rest("crm.lead.list", {"filter": filter_, "select": ["ID", "TITLE", "ORIGIN_ID"]})
    return body.json()["result"]


def _add_lead(portal: Sandbox, title: str) -> int:
    return int(portal.rest("crm.lead.add", {"fields": {"TITLE": title}}).json()["result"])


def _title(portal: Sandbox, lead_id: int) -> str:
    return portal.rest("crm.lead.get", {"id": lead_id}).json()["result"]["TITLE"]


# --- idempotency -------------------------------------------------------------------------------


def test_twenty_processes_one_key_create_one_lead(portal: Sandbox, cli: Cli) -> None:
    # Keep the winner's call in flight long enough for the others to collide with it.
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "error": None, "delay_ms": 700}]})
    args = ("crm.lead.add", "--params", _params({"fields": {"TITLE": "race"}}), "--confirm-write")
    procs = [cli.popen(*args, "--idempotency-key", "race-key-1") for _ in range(20)]
    runs = [cli.finish(proc) for proc in procs]
    leads = _leads(portal, TITLE="race")
    assert len(leads) == 1
    lead_id = int(leads[0]["ID"])
    codes = Counter(run.code for run in runs)
    print(f"\n20-process race: exit codes {dict(codes)}; leads created: {len(leads)}")
    assert set(codes) <= {0, 5} and codes[0] >= 1
    for run in runs:
        if run.code == 0:
            assert run.json()["result"] == lead_id
        else:
            assert run.error()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    replays = [run for run in runs if run.code == 0 and "replayed" in run.err]
    assert len(replays) == codes[0] - 1
    late = cli(*args, "--idempotency-key", "race-key-1")
    assert late.code == 0 and late.json()["result"] == lead_id and "replayed" in late.err
    assert len(_leads(portal, TITLE="race")) == 1


def test_same_key_other_params_is_a_conflict(cli: Cli) -> None:
    base = ("crm.lead.add", "--confirm-write", "--idempotency-key", "k-params")
    assert cli(*base, "--params", _params({"fields": {"TITLE": "a"}})).code == 0
    run = cli(*base, "--params", _params({"fields": {"TITLE": "b"}}))
    assert run.code == 5 and run.error()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_write_that_ran_but_answered_500_is_reconciled(portal: Sandbox, cli: Cli) -> None:
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "after": True, "times": 1}]})
    args = ("crm.lead.add", "--params", _params({"fields": {"TITLE": "after-500"}}))
    first = cli(*args, "--confirm-write", "--idempotency-key", "form-500")
    assert first.code == 7, first.err
    assert len(_leads(portal, TITLE="after-500")) == 1
    second = cli(*args, "--confirm-write", "--idempotency-key", "form-500")
    assert second.code == 0, second.err
    (lead,) = _leads(portal, TITLE="after-500")
    assert second.json()["result"] == int(lead["ID"]) and lead["ORIGIN_ID"] == "form-500"
    assert "ORIGIN_ID" in second.err
    third = cli(*args, "--confirm-write", "--idempotency-key", "form-500")
    assert third.json()["result"] == int(lead["ID"]) and len(_leads(portal, TITLE="after-500")) == 1


def test_failed_before_running_is_sent_again(portal: Sandbox, cli: Cli) -> None:
    # A 500 *before* the method ran: the lookup finds nothing, so the retry creates the lead.
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "times": 1}]})
    args = ("crm.lead.add", "--params", _params({"fields": {"TITLE": "before-500"}}))
    assert cli(*args, "--confirm-write", "--idempotency-key", "k-before").code == 7
    assert _leads(portal, TITLE="before-500") == []
    assert cli(*args, "--confirm-write", "--idempotency-key", "k-before").code == 0
    assert len(_leads(portal, TITLE="before-500")) == 1


def test_unknown_outcome_elsewhere_waits_for_resolve(portal: Sandbox, cli: Cli) -> None:
    portal.admin("faults", {"rules": [{"method": "tasks.task.add", "after": True, "times": 1}]})
    fields = {"fields": {"TITLE": "unsure", "RESPONSIBLE_ID": 1}}
    args = ("tasks.task.add", "--params", _params(fields), "--confirm-write")
    assert cli(*args, "--idempotency-key", "t-1").code == 7
    refused = cli(*args, "--idempotency-key", "t-1")
    assert refused.code == 7 and refused.error()["code"] == "OUTCOME_UNRESOLVED"
    assert "--idempotency-resolve" in refused.error()["hint"]
    done = cli(*args, "--idempotency-key", "t-1", "--idempotency-resolve", "done")
    assert done.code == 0
    assert cli(*args, "--idempotency-key", "t-1").code == 0
    assert len(_tasks(portal, "unsure")) == 1


def test_automatic_key_catches_an_accidental_double_run(portal: Sandbox, cli: Cli) -> None:
    args = ("crm.lead.add", "--params", _params({"fields": {"TITLE": "twice"}}), "--confirm-write")
    first, second = cli(*args), cli(*args)
    assert first.code == second.code == 0 and first.json() == second.json()
    assert "replayed" in second.err and len(_leads(portal, TITLE="twice")) == 1
    assert cli(*args, "--no-idempotency", B24_ALLOW_FLAGS="no-idempotency").code == 0
    assert len(_leads(portal, TITLE="twice")) == 2


def test_definite_failure_releases_the_key(portal: Sandbox, cli: Cli) -> None:
    args = ("crm.lead.update", "--confirm-write", "--idempotency-key", "upd-1")
    missing = cli(*args, "--params", _params({"id": 999999, "fields": {"TITLE": "x"}}))
    assert missing.code == 1
    lead_id = _add_lead(portal, "exists")
    fixed = cli(*args, "--params", _params({"id": 999999, "fields": {"TITLE": "x"}}))
    assert fixed.code == 1  # same params again: sent again (not replayed, not a conflict)
    other = cli(
        "crm.lead.update",
        "--confirm-write",
        "--idempotency-key",
        "upd-2",
        "--params",
        _params({"id": lead_id, "fields": {"TITLE": "renamed"}}),
    )
    assert other.code == 0 and _title(portal, lead_id) == "renamed"


# --- plans -------------------------------------------------------------------------------------


def _plan(cli: Cli, method: str, params: dict[str, Any], *extra: str) -> dict[str, Any]:
    run = cli(method, "--params", _params(params), "--plan-only", *extra)
    assert run.code == 0, run.err
    return run.json()


def test_plan_shows_the_diff_and_the_command(portal: Sandbox, cli: Cli) -> None:
    lead_id = _add_lead(portal, "Before")
    shown = _plan(cli, "crm.lead.update", {"id": lead_id, "fields": {"TITLE": "After"}})
    plan = shown["plan"]
    assert plan["preview"]["changes"] == [{"field": "TITLE", "before": "Before", "after": "After"}]
    assert plan["risk"] == "write" and plan["method"] == "crm.lead.update"
    assert shown["execute"].endswith(f"--execute-plan {plan['id']}")
    assert _title(portal, lead_id) == "Before"
    ran = cli("--execute-plan", plan["id"])
    assert ran.code == 0, ran.err and _title(portal, lead_id) == "After"
    again = cli("--execute-plan", plan["id"])
    assert again.code == 5 and again.error()["code"] == "PLAN_SPENT"


def test_edited_plan_is_refused(portal: Sandbox, cli: Cli) -> None:
    lead_id = _add_lead(portal, "Keep")
    plan = _plan(cli, "crm.lead.update", {"id": lead_id, "fields": {"TITLE": "Fine"}})["plan"]
    (path,) = cli.state.glob(f"*/plans/{plan['id']}.json")
    stored = json.loads(path.read_text())
    stored["plan"]["params"]["fields"]["TITLE"] = "Evil"
    path.write_text(json.dumps(stored))
    run = cli("--execute-plan", plan["id"])
    assert run.code == 5 and run.error()["code"] == "PLAN_TAMPERED"
    assert "changed after it was made" in run.error()["message"]
    assert _title(portal, lead_id) == "Keep"


def test_expired_plan_is_refused(portal: Sandbox, cli: Cli) -> None:
    short = cli.with_env(B24_PLAN_TTL_SEC="1")
    lead_id = _add_lead(portal, "Slow")
    plan = _plan(short, "crm.lead.update", {"id": lead_id, "fields": {"TITLE": "Late"}})["plan"]
    time.sleep(1.3)
    run = short("--execute-plan", plan["id"])
    assert run.code == 5 and run.error()["code"] == "PLAN_EXPIRED"
    assert _title(portal, lead_id) == "Slow"


def test_plan_for_another_portal_is_refused(
    portal: Sandbox, cli: Cli, start_sandbox: Any, tmp_path: Path
) -> None:
    here = cli.with_env(B24_PLAN_FILE=str(tmp_path / "shared-plans"))
    lead_id = _add_lead(portal, "Here")
    plan = _plan(here, "crm.lead.update", {"id": lead_id, "fields": {"TITLE": "There"}})["plan"]
    other = start_sandbox("--plan", "unlimited")
    run = here("--execute-plan", plan["id"], B24_WEBHOOK_URL=other.webhook_url)
    assert run.code == 5 and run.error()["code"] == "PLAN_OTHER_PORTAL"
    assert "another portal" in run.error()["message"]
    assert _title(portal, lead_id) == "Here"


def test_plan_is_stale_after_the_record_changed(portal: Sandbox, cli: Cli) -> None:
    lead_id = _add_lead(portal, "Original")
    plan = _plan(cli, "crm.lead.update", {"id": lead_id, "fields": {"COMMENTS": "mine"}})["plan"]
    portal.rest("crm.lead.update", {"id": lead_id, "fields": {"TITLE": "Someone else's"}})
    run = cli("--execute-plan", plan["id"])
    assert run.code == 5 and run.error()["code"] == "PLAN_STALE"
    assert "modified or deleted" in run.error()["message"]
    assert _title(portal, lead_id) == "Someone else's"


def test_execute_plan_takes_no_other_call_params(cli: Cli, portal: Sandbox) -> None:
    lead_id = _add_lead(portal, "P")
    plan = _plan(cli, "crm.lead.update", {"id": lead_id, "fields": {"TITLE": "Q"}})["plan"]
    for extra in (("crm.lead.update",), ("--params", "{}"), ("--idempotency-key", "x")):
        run = cli("--execute-plan", plan["id"], *extra)
        assert run.code == 2, (extra, run.err)
    ran = cli("--execute-plan", plan["id"])
    assert ran.code == 0, ran.err


def test_destructive_plan_still_needs_confirm_destructive(portal: Sandbox, cli: Cli) -> None:
    lead_id = _add_lead(portal, "Doomed")
    shown = _plan(cli, "crm.lead.delete", {"id": lead_id})
    assert shown["execute"].endswith("--confirm-destructive")
    run = cli("--execute-plan", shown["plan"]["id"])
    assert run.code == 3 and "--confirm-destructive" in run.error()["message"]
    assert cli("--execute-plan", shown["plan"]["id"], "--confirm-destructive").code == 0
    assert _leads(portal, ID=lead_id) == []


def test_unlisted_plan_needs_the_operators_consent_again(cli: Cli) -> None:
    consenting = cli.with_env(B24_ALLOW_FLAGS="allow-unlisted")
    shown = _plan(consenting, "vendor.widget.add", {"x": 1}, "--allow-unlisted")
    assert shown["execute"].endswith(f"--execute-plan {shown['plan']['id']}")
    refused = cli("--execute-plan", shown["plan"]["id"])
    assert refused.code == 3 and refused.error()["code"] == "FLAG_NOT_ALLOWED"
    ran = consenting("--execute-plan", shown["plan"]["id"])  # the sandbox lacks the method
    assert ran.code == 1 and ran.error()["code"] == "ERROR_METHOD_NOT_FOUND"


def test_require_plan(portal: Sandbox, cli: Cli) -> None:
    args = ("crm.lead.add", "--params", _params({"fields": {"TITLE": "planned"}}))
    refused = cli(*args, "--confirm-write", B24_REQUIRE_PLAN="1")
    assert refused.code == 3 and refused.error()["code"] == "PLAN_REQUIRED"
    plan = _plan(cli, *args[:1], json.loads(args[2]), "--require-plan")["plan"]
    assert cli("--execute-plan", plan["id"], B24_REQUIRE_PLAN="1").code == 0
    assert len(_leads(portal, TITLE="planned")) == 1
    assert cli("crm.lead.list", B24_REQUIRE_PLAN="1").code == 0


# --- policy from the command line ----------------------------------------------------------------


def test_policy_refusals_name_the_flag(cli: Cli) -> None:
    write = cli("crm.lead.add", "--params", _params({"fields": {"TITLE": "x"}}))
    assert write.code == 3 and "--confirm-write" in write.error()["message"]
    comms = cli(
        "im.message.add",
        "--params",
        _params({"DIALOG_ID": "1", "MESSAGE": "hi"}),
        "--confirm-write",
    )
    assert comms.code == 3 and "--packs core,comms" in comms.error()["hint"]
    batch = cli(
        "batch",
        "--params",
        _params({"cmd": {"a": "crm.lead.list", "b": "crm.lead.delete?id=1"}}),
        "--confirm-write",
    )
    assert batch.code == 3 and "command 'b' (crm.lead.delete)" in batch.error()["message"]


# --- audit -------------------------------------------------------------------------------------


def _tampered_copy(source: Path, target: Path, change) -> Path:
    lines = source.read_text().splitlines(keepends=True)
    target.write_text("".join(change(lines)))
    shutil.copy(str(source) + ".head", str(target) + ".head")
    return target


def test_audit_records_every_call_and_verify_names_tampered_lines(
    portal: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    lead_id = _add_lead(portal, "Audited")
    cli("crm.lead.get", "--params", _params({"id": lead_id}))
    cli("crm.lead.add", "--params", _params({"fields": {"TITLE": "a"}}), "--confirm-write")
    cli("crm.lead.add", "--params", _params({"fields": {"TITLE": "a"}}), "--confirm-write")
    cli("crm.lead.delete", "--params", _params({"id": lead_id}))
    cli("crm.lead.get", "--params", _params({"id": 999999}))
    cli(
        "crm.lead.update",
        "--params",
        _params({"id": lead_id, "fields": {"TITLE": "b"}}),
        "--plan-only",
    )
    (log,) = cli.state.glob("*/audit.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["outcome"] for line in lines] == [
        "ok",
        "ok",
        "replayed",
        "refused",
        "error",
        "planned",
    ]
    assert lines[1]["idempotency_key"].startswith("auto-") and lines[1]["risk"] == "write"
    assert lines[4]["error"] and lines[5]["plan_id"]
    assert all(line["portal"] == lines[0]["portal"] for line in lines)
    ok = cli("--verify-audit")
    assert ok.code == 0 and ok.json()["ok"] and ok.json()["lines"] == 6

    def edit(lines):
        lines[2] = lines[2].replace('"replayed"', '"ok"')
        return lines

    def delete(lines):
        return lines[:3] + lines[4:]

    def reorder(lines):
        return [lines[0], lines[2], lines[1], *lines[3:]]

    for name, change, line_no in (
        ("edit", edit, 3),
        ("delete", delete, 4),
        ("reorder", reorder, 2),
    ):
        copy = _tampered_copy(log, tmp_path / f"{name}.jsonl", change)
        run = cli("--verify-audit", str(copy))
        assert run.code == 1, (name, run.err)
        assert f"{copy}:{line_no}" in run.error()["message"], (name, run.err)


def test_audit_rotates_by_size_and_verifies_across_files(cli: Cli) -> None:
    small = cli.with_env(B24_AUDIT_MAX_BYTES="4096")
    for n in range(12):
        assert small("crm.lead.list", "--params", _params({"filter": {"ID": n}})).code == 0
    rotated = sorted(cli.state.glob("*/audit.jsonl.0*"))
    assert rotated and all(path.stat().st_size <= 4096 for path in rotated)
    report = small("--verify-audit").json()
    assert report["ok"] and report["lines"] == 12 and len(report["files"]) == len(rotated) + 1
    lines = rotated[0].read_text().splitlines()
    rotated[0].write_text("\n".join(lines[1:]) + "\n")
    broken = small("--verify-audit")
    assert broken.code == 1 and f"{rotated[0]}:1" in broken.error()["message"]


def test_no_audit_writes_nothing(cli: Cli) -> None:
    assert cli("crm.lead.list", "--no-audit", B24_ALLOW_FLAGS="no-audit").code == 0
    assert list(cli.state.glob("*/audit.jsonl")) == []


# --- secrets -------------------------------------------------------------------------------------


def _representative_calls(cli: Cli, portal: Sandbox, marker: str) -> None:
    lead_id = _add_lead(portal, f"lead with {marker}")
    title = {"fields": {"TITLE": f"note {marker}"}}
    runs = [
        cli("user.current"),
        cli("crm.lead.get", "--params", _params({"id": lead_id})),
        cli(
            "crm.lead.add",
            "--params",
            _params(title),
            "--confirm-write",
            "--idempotency-key",
            "sec-1",
        ),
        cli(
            "crm.lead.add",
            "--params",
            _params(title),
            "--confirm-write",
            "--idempotency-key",
            "sec-1",
        ),
        cli("crm.lead.get", "--params", _params({"id": 999999})),
        cli(
            "im.message.add",
            "--params",
            _params({"DIALOG_ID": "1", "MESSAGE": marker}),
            "--confirm-write",
        ),
        cli("crm.lead.list", "--all", "--output", "jsonl"),
        cli("--verify-audit"),
    ]
    plan = cli(
        "crm.lead.update",
        "--params",
        _params({"id": lead_id, "fields": {"COMMENTS": "x"}}),
        "--plan-only",
    )
    runs.append(cli("--execute-plan", plan.json()["plan"]["id"]))
    assert [run.code for run in runs] == [0, 0, 0, 0, 1, 3, 0, 0, 0], [r.err for r in runs]


def _assert_nowhere(cli: Cli, secrets: list[str], token_store: str | None = None) -> None:
    outputs = "\n".join(run.out + run.err for run in cli.runs)
    checked = 0
    for path in cli.state.rglob("*"):
        if not path.is_file():
            continue
        if token_store and path.name.startswith(token_store) and path.suffix == ".json":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            continue
        data = path.read_bytes()
        checked += 1
        for secret in secrets:
            assert secret.encode() not in data, (path, secret[:4])
    for secret in secrets:
        assert secret not in outputs, secret[:4]
    assert checked >= 4


def test_no_secret_anywhere_webhook(portal: Sandbox, tmp_path: Path) -> None:
    code = portal.webhook["code"]
    cli = webhook_cli(portal, tmp_path, B24_AUDIT_PARAMS="full")
    _representative_calls(cli, portal, marker=code)
    _assert_nowhere(cli, [code])


def test_no_secret_anywhere_oauth(portal: Sandbox, tmp_path: Path) -> None:
    oauth = portal.oauth
    env = oauth_env(portal, tmp_path / "state")
    env.update(B24_APPLICATION_TOKEN=oauth["application_token"], B24_AUDIT_PARAMS="full")
    cli = Cli(tmp_path, env)
    portal.admin("expire-tokens")  # the run must refresh, so rotated tokens are in play too
    _representative_calls(cli, portal, marker=oauth["access_token"])
    (store,) = cli.state.glob("*/oauth-*.json")
    rotated = json.loads(store.read_text())
    secrets = [
        oauth[k] for k in ("client_secret", "access_token", "refresh_token", "application_token")
    ]
    secrets += [v for v in rotated.values() if isinstance(v, str) and len(v) >= 32]
    _assert_nowhere(cli, secrets, token_store="oauth-")


# --- batch files and REST 3.0 ---------------------------------------------------------------------


def _batch_file(tmp_path: Path, calls: list[tuple[str, dict[str, Any]]]) -> str:
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps({"method": m, "params": p}) + "\n" for m, p in calls))
    return str(path)


def test_batch_file_run_twice_is_replayed(portal: Sandbox, cli: Cli, tmp_path: Path) -> None:
    path = _batch_file(
        tmp_path,
        [
            ("crm.lead.add", {"fields": {"TITLE": "bf"}}),
            ("crm.lead.add", {"fields": {"TITLE": "bf"}}),
            ("crm.lead.get", {"id": 999999}),
        ],
    )
    first = cli("--batch-file", path, "--confirm-write")
    second = cli("--batch-file", path, "--confirm-write")
    assert first.code == second.code == 1  # line 3 failed both times, as stored
    assert first.out == second.out and len(first.out.splitlines()) == 3
    assert "replayed" in second.err and second.error()["code"] == first.error()["code"]
    assert len(_leads(portal, TITLE="bf")) == 2
    consenting = cli.with_env(B24_ALLOW_FLAGS="no-idempotency")
    assert consenting("--batch-file", path, "--confirm-write", "--no-idempotency").code == 1
    assert len(_leads(portal, TITLE="bf")) == 4


def test_batch_file_with_an_unknown_create_is_settled_by_its_line_origin_id(
    portal: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    portal.admin("faults", {"rules": [{"method": "crm.deal.add", "after": True, "times": 1}]})
    path = _batch_file(
        tmp_path,
        [
            ("crm.lead.add", {"fields": {"TITLE": "ok"}}),
            ("crm.deal.add", {"fields": {"TITLE": "d"}}),
        ],
    )
    first = cli("--batch-file", path, "--confirm-write")
    assert first.code == 7 and len(first.out.splitlines()) == 2
    again = cli("--batch-file", path, "--confirm-write")
    assert again.code == 0, again.err
    deals = portal.rest("crm.deal.list", {"filter": {"TITLE": "d"}, "select": ["ID"]}).json()
    assert len(deals["result"]) == 1 and len(_leads(portal, TITLE="ok")) == 1
    results = [json.loads(line)["result"] for line in again.out.splitlines()]
    assert results[1] == int(deals["result"][0]["ID"])


def test_batch_file_with_an_unknown_line_that_cannot_be_looked_up_names_it(
    portal: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    portal.admin("faults", {"rules": [{"method": "tasks.task.add", "after": True, "times": 1}]})
    task = {"fields": {"TITLE": "unsure-line", "RESPONSIBLE_ID": 1}}
    path = _batch_file(
        tmp_path, [("crm.lead.add", {"fields": {"TITLE": "ok"}}), ("tasks.task.add", task)]
    )
    assert cli("--batch-file", path, "--confirm-write").code == 7
    again = cli("--batch-file", path, "--confirm-write")
    assert again.code == 7 and again.error()["code"] == "BATCH_LINES_UNRESOLVED"
    assert "line 2 (tasks.task.add)" in again.error()["message"]
    assert "--idempotency-resolve" in again.error()["hint"]
    done = cli("--batch-file", path, "--confirm-write", "--idempotency-resolve", "done")
    assert done.code == 0, done.err
    assert len(_leads(portal, TITLE="ok")) == 1 and len(_tasks(portal, "unsure-line")) == 1


def test_rest_v3_write_resends_the_same_idempotency_key(portal: Sandbox, cli: Cli) -> None:
    # The answer is lost (client timeout) but the portal finished and kept it under the key.
    portal.admin(
        "faults",
        {"rules": [{"method": "tasks.task.add", "error": None, "delay_ms": 800, "times": 1}]},
    )
    fields = {"fields": {"title": "v3 task", "creatorId": 1, "responsibleId": 1}}
    args = ("tasks.task.add", "--rest-v3", "--params", _params(fields), "--confirm-write")
    first = cli(*args, "--idempotency-key", "v3-key", B24_READ_TIMEOUT="0.3")
    assert first.code == 7, first.err
    deadline = time.monotonic() + 15
    while not _tasks(portal, "v3 task") and time.monotonic() < deadline:
        time.sleep(0.1)  # the portal is still running the call whose answer was lost
    time.sleep(1.0)  # ...and keeps its answer once the (delayed) reply is written
    held = cli(*args, "--idempotency-key", "v3-key")
    assert held.code == 7 and held.error()["code"] == "OUTCOME_UNRESOLVED"
    resent = cli(*args, "--idempotency-key", "v3-key", "--idempotency-resolve", "failed")
    assert resent.code == 0, resent.err
    (task,) = _tasks(portal, "v3 task")
    assert resent.json()["result"]["item"]["id"] == int(task["id"])


def _tasks(portal: Sandbox, title: str) -> list[dict[str, Any]]:
    return portal.rest("tasks.task.list", {"filter": {"TITLE": title}}).json()["result"]["tasks"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("B24_PLAN_TTL_SEC", "100000000000000000000"),
        ("B24_PLAN_TTL_SEC", "604801"),
        ("B24_APPROVAL_WAIT_SEC", "1e300"),
        ("B24_APPROVAL_WAIT_SEC", "86401"),
    ],
)
def test_a_plan_ttl_or_approval_wait_past_its_maximum_is_refused_before_anything(
    portal: Sandbox, tmp_path: Path, variable: str, value: str
) -> None:
    """review7 L3: a TTL of 1e20 s was "a bug" (OverflowError, exit 4 INTERNAL_ERROR) with a
    plan file left behind (file store) or "delete that Redis key"; an approval wait of 1e300 was
    taken. Past a week (TTL) or a day (wait) each is CONFIG_INVALID now, one line, no plan."""
    cli = Cli.on_webhook(portal, tmp_path).with_env(**{variable: value})
    params = json.dumps({"fields": {"TITLE": "far off"}})
    run = cli("crm.lead.add", "--params", params, "--plan-only")
    assert run.code == 4 and len(run.err.strip().splitlines()) == 1, run.err
    assert run.error()["code"] == "CONFIG_INVALID" and variable in run.err
    assert not list(cli.state.glob("**/plans/*"))
    at_most = {"B24_PLAN_TTL_SEC": "604800", "B24_APPROVAL_WAIT_SEC": "86400"}[variable]
    assert (
        cli.with_env(**{variable: at_most})("crm.lead.add", "--params", params, "--plan-only").code
        == 0
    )
