"""Plans keep how they were made, and a batch file can be one plan.

The printed execute line runs as printed (from another folder, with no other settings); a run
refused before anything was sent leaves the plan usable; a bulk plan of 300 updates reads its
previews in 6 requests, runs in 6 and its rerun sends nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import Cli, Run, check
from client_support import oauth_env
from conftest import Sandbox, write_env

CHAT = {"TYPE": "CHAT", "TITLE": "Planned chat", "USERS": [1]}


def _requests(portal: Sandbox) -> int:
    return portal.stats()["requests"]


def _chats(portal: Sandbox) -> int:
    return portal.stats()["by_method"].get("im.chat.add", 0)


@pytest.fixture
def oauth_file_cli(portal: Sandbox, tmp_path: Path) -> Cli:
    """No portal settings in the environment: they are all in ``work/oauth.env``."""
    cli = Cli(tmp_path, {})
    settings = oauth_env(portal, cli.state)
    lines = [f"{k}={v}" for k, v in settings.items() if k not in ("B24_STATE_DIR", "HOME")]
    write_env(cli.cwd / "oauth.env", "\n".join(lines) + "\n")
    return cli


def _plan_chat(cli: Cli) -> dict[str, Any]:
    run = cli(
        "im.chat.add",
        "--params",
        json.dumps(CHAT),
        "--env-file",
        "oauth.env",
        "--packs",
        "core,comms",
        "--plan-only",
    )
    assert run.code == 0, run.err
    return run.json()


def _run_line(cli: Cli, line: str, cwd: Path) -> Run:
    """The printed line through a shell, from ``cwd``, with this venv's python3 first on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + cli.env.get("PATH", "")
    proc = subprocess.run(
        line, shell=True, cwd=cwd, env={**cli.env, "PATH": path}, capture_output=True, text=True
    )
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    check(run)
    return run


def test_plan_records_its_context_and_the_printed_line_runs(
    portal: Sandbox, oauth_file_cli: Cli, tmp_path: Path
) -> None:
    shown = _plan_chat(oauth_file_cli)
    plan = shown["plan"]
    env_file = str(oauth_file_cli.cwd / "oauth.env")
    assert plan["auth_mode"] == "oauth" and plan["env_file"] == env_file
    assert plan["packs"] == ["core", "comms"] and plan["api"] == "v2"
    assert shlex.split(shown["execute"])[-2:] == ["--env-file", env_file]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = _chats(portal)
    ran = _run_line(oauth_file_cli, shown["execute"], elsewhere)
    assert ran.code == 0, ran.err
    assert isinstance(ran.json()["result"], int) and _chats(portal) == before + 1
    again = _run_line(oauth_file_cli, shown["execute"], elsewhere)
    assert again.code == 5 and again.error()["code"] == "PLAN_SPENT"
    assert _chats(portal) == before + 1


def test_refused_executions_leave_the_plan_usable(
    portal: Sandbox, oauth_file_cli: Cli, tmp_path: Path
) -> None:
    cli = oauth_file_cli
    shown = _plan_chat(cli)
    plan_id = shown["plan"]["id"]
    # 1. Other credentials (a webhook in the environment, no --env-file): refused, unsent.
    before = _requests(portal)
    other = cli("--execute-plan", plan_id, B24_WEBHOOK_URL=portal.webhook_url)
    assert other.code == 5 and other.error()["code"] == "PLAN_OTHER_AUTH"
    assert _requests(portal) == before
    # 2. The operator's ceiling now leaves comms out: refused by policy, unsent.
    ceiling = cli("--execute-plan", plan_id, "--env-file", "oauth.env", B24_PACKS="core")
    assert ceiling.code == 3 and _requests(portal) == before
    # 3. The portal refuses the call itself (it did not run): the claim is given back.
    portal.admin(
        "faults",
        {
            "rules": [
                {"method": "im.chat.add", "error": "WRONG_AUTH_TYPE", "status": 401, "times": 1}
            ]
        },
    )
    refused = cli("--execute-plan", plan_id, "--env-file", "oauth.env")
    assert refused.code == 4 and refused.error()["code"] == "WRONG_AUTH_TYPE", refused.err
    assert _chats(portal) == 1  # that one refused request
    # Then the printed line runs, once.
    ran = _run_line(cli, shown["execute"], cli.cwd)
    assert ran.code == 0, ran.err
    assert _chats(portal) == 2
    spent = _run_line(cli, shown["execute"], cli.cwd)
    assert spent.code == 5 and spent.error()["code"] == "PLAN_SPENT"


# --- bulk plans -----------------------------------------------------------------------------------


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})


def _lead_ids(cli: Cli) -> list[int]:
    run = cli("crm.lead.list", "--all", "--output", "jsonl", "--params", '{"select": ["ID"]}')
    assert run.code == 0, run.err
    return [int(json.loads(line)["ID"]) for line in run.out.splitlines()]


def _write_lines(path: Path, calls: list[tuple[str, dict[str, Any]]]) -> str:
    path.write_text("".join(json.dumps({"method": m, "params": p}) + "\n" for m, p in calls))
    return str(path)


def test_bulk_plan_of_300_updates(portal: Sandbox, cli: Cli, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 300})
    ids = _lead_ids(cli)
    assert len(ids) == 300
    updates = [("crm.lead.update", {"id": i, "fields": {"TITLE": f"Bulk {i}"}}) for i in ids]
    path = _write_lines(tmp_path / "updates.jsonl", updates)

    before = _requests(portal)
    planned = cli("--batch-file", path, "--plan-only")
    assert planned.code == 0, planned.err
    plan_reads = _requests(portal) - before
    shown = planned.json()
    previews = shown["plan"]["previews"]
    assert len(previews) == 300 and plan_reads == 6
    first = previews[0]
    assert first["line"] == 1 and first["action"] == "update"
    assert (
        first["changes"][0]["field"] == "TITLE" and first["changes"][0]["after"] == f"Bulk {ids[0]}"
    )

    before = _requests(portal)
    ran = cli(*shlex.split(shown["execute"])[2:])
    assert ran.code == 0, ran.err
    executed_requests = _requests(portal) - before
    lines = [json.loads(line) for line in ran.out.splitlines()]
    assert executed_requests == 6 and len(lines) == 300
    assert [line["line"] for line in lines] == list(range(1, 301))
    assert all(line["result"] is True for line in lines)

    before = _requests(portal)
    rerun = cli(*shlex.split(shown["execute"])[2:])
    assert rerun.code == 5 and rerun.error()["code"] == "PLAN_SPENT"
    replay = cli("--batch-file", path, "--confirm-write")
    assert replay.code == 0 and "replayed" in replay.err
    rerun_requests = _requests(portal) - before
    assert rerun_requests == 0
    print(
        f"\nbulk plan: {plan_reads} requests to plan with {len(previews)} previews, "
        f"{executed_requests} to execute, {rerun_requests} on rerun"
    )


def test_bulk_plan_checks_every_line(portal: Sandbox, cli: Cli, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 2})
    first, second = _lead_ids(cli)
    calls = [
        ("crm.lead.update", {"id": first, "fields": {"TITLE": "ok"}}),
        ("im.message.add", {"DIALOG_ID": "1", "MESSAGE": "comms line"}),
    ]
    path = _write_lines(tmp_path / "mixed.jsonl", calls)
    before = _requests(portal)
    refused = cli("--batch-file", path, "--plan-only")
    assert refused.code == 3 and "line 2" in refused.error()["message"]
    assert (
        cli("--batch-file", path, "--plan-only", "--packs", "core,comms", B24_READ_ONLY="1").code
        == 3
    )
    assert _requests(portal) == before
    missing = _write_lines(tmp_path / "missing.jsonl", [("crm.lead.delete", {"id": 999999})])
    gone = cli("--batch-file", missing, "--plan-only")
    assert gone.code == 1 and "line(s) 1" in gone.error()["message"]
    deletes = _write_lines(tmp_path / "deletes.jsonl", [("crm.lead.delete", {"id": second})])
    shown = cli("--batch-file", deletes, "--plan-only").json()
    assert shown["plan"]["previews"][0]["record"]["ID"] == str(second)
    assert shown["execute"].endswith("--confirm-destructive")
    assert cli("--execute-plan", shown["plan"]["id"]).code == 3  # a reviewer deletes on purpose
    assert cli(*shlex.split(shown["execute"])[2:]).code == 0
    assert _lead_ids(cli) == [first]
