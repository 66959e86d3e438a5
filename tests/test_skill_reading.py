"""Lean reading: SKILL.md routes each kind of request to the few files its row names. For the
most common first actions (create a lead, export all deals, drain offline events) the command is
in SKILL.md itself, costs the agent a few kilobytes to find, and works exactly as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import Cli
from conftest import ROOT, Sandbox
from test_worker_support import seed_events, worker_env

SKILL = ROOT / "skills" / "bitrix24-agent"
#: The first correct action of each request: the row of the routing table that serves it and a
#: piece of the command in SKILL.md that carries it out.
FIRST_ACTIONS = {
    "create a lead": ("create or change a lead", "crm.lead.add"),
    "export all deals": ("export a whole table", "crm.deal.list --all"),
    "drain offline events": ("drain or replay offline events", "offline_sync_worker.py --drain"),
}
#: What reading up to the first action may cost (the seed's SKILL.md alone was 21 KB).
BUDGET = 10_000
SHORT_FILE = 4_000
ROW = re.compile(r"^\| (?P<task>[^|]+?) \| (?P<read>[^|]+?) \|$", re.M)


def skill_md() -> str:
    return (SKILL / "SKILL.md").read_text(encoding="utf-8")


def routes() -> dict[str, list[Path]]:
    """The routing table: each row's request -> the reference files it sends the agent to."""
    text = skill_md()
    section = text.split("## Route the request", 1)[1].split("\n## ", 1)[0]
    rows = {m["task"]: m["read"] for m in ROW.finditer(section)}
    rows.pop("the user wants")
    return {
        task: [SKILL / name for name in re.findall(r"`(references/[\w.-]+\.md)`", read)]
        for task, read in rows.items()
    }


def route_for(request: str) -> list[Path]:
    row, _ = FIRST_ACTIONS[request]
    (files,) = [files for task, files in routes().items() if task.startswith(row)]
    return files


def reading_cost(request: str) -> int:
    """Bytes read before the first correct action: SKILL.md and every file its row routes to."""
    return len(skill_md().encode()) + sum(path.stat().st_size for path in route_for(request))


def command(piece: str) -> list[str]:
    """The one command line in SKILL.md that contains ``piece``, ready to run from anywhere."""
    (line,) = [x.strip() for x in skill_md().splitlines() if piece in x and "python3" in x]
    argv = shlex.split(line.split(" > ", 1)[0])
    assert argv[0] == "python3"
    return [sys.executable, str(SKILL / argv[1]), *argv[2:]]


def test_every_route_names_files_that_exist() -> None:
    table = routes()
    assert len(table) >= 6
    assert all(path.is_file() for files in table.values() for path in files), table


@pytest.mark.parametrize("request_", FIRST_ACTIONS)
def test_a_common_first_action_needs_at_most_one_short_file(request_: str) -> None:
    files = route_for(request_)
    assert len(files) <= 1 and all(path.stat().st_size <= SHORT_FILE for path in files)
    assert reading_cost(request_) <= BUDGET


def test_create_a_lead_runs_as_written(portal: Sandbox, tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})
    argv = command(FIRST_ACTIONS["create a lead"][1])
    first = subprocess.run(argv, capture_output=True, text=True, env=cli.env, cwd=cli.cwd)
    assert first.returncode == 0, first.stderr
    lead = portal.rest("crm.lead.get", {"id": json.loads(first.stdout)}).json()["result"]
    assert lead["TITLE"] == "Web form #123"
    again = subprocess.run(argv, capture_output=True, text=True, env=cli.env, cwd=cli.cwd)
    assert again.stdout == first.stdout  # the idempotency key: no second lead
    assert portal.rest("crm.lead.list", {}).json()["total"] == 1


def test_export_all_deals_runs_as_written(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.deal": 3000})
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})
    argv = command(FIRST_ACTIONS["export all deals"][1])
    done = subprocess.run(argv, capture_output=True, text=True, env=cli.env, cwd=cli.cwd)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["ID"] for line in done.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 3000


def test_drain_offline_events_runs_as_written(portal: Sandbox, tmp_path: Path) -> None:
    seeded = seed_events(portal, 3)
    handled = tmp_path / "handled.jsonl"
    (tmp_path / "sync.py").write_text(  # the user's handler that SKILL.md's command names
        "import sys\n"
        f"with open({str(handled)!r}, 'a') as out:\n"
        "    out.write(sys.stdin.read().strip() + '\\n')\n"
    )
    argv = command(FIRST_ACTIONS["drain offline events"][1])
    env = worker_env(portal, tmp_path / "state")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line)["event"]["ID"] for line in handled.read_text().splitlines()]
    assert sorted(map(str, events)) == sorted(seeded)
