"""B24_APPROVAL in plain CLI mode: a write above it never runs as if a person had approved it.

The agent runs as the operator's user here and could approve its own plan, so approval cannot
be enforced; the CLI refuses such writes (exit 3, nothing sent) and says where it is enforced.
Broker mode, where a person does approve, is tested in test_broker.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Cli
from conftest import Sandbox


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off"})


def _sent(portal: Sandbox, method: str) -> int:
    return portal.stats()["by_method"].get(method, 0)


def test_writes_above_the_approval_level_are_refused_not_pretended(
    portal: Sandbox, cli: Cli
) -> None:
    approving = cli.with_env(B24_APPROVAL="writes")
    add = ("crm.lead.add", "--params", '{"fields": {"TITLE": "needs a person"}}')
    direct = approving(*add, "--confirm-write")
    assert direct.code == 3 and direct.error()["code"] == "APPROVAL_REQUIRED"
    planned = approving(*add, "--plan-only")
    assert planned.code == 0 and "cannot enforce" in planned.json()["approval"]
    run = approving("--execute-plan", planned.json()["plan"]["id"])
    assert run.code == 3 and run.error()["code"] == "APPROVAL_UNENFORCEABLE"
    assert "plain CLI mode cannot enforce" in run.error()["message"]
    assert _sent(portal, "crm.lead.add") == 0
    assert approving("user.current").code == 0  # reads are not held up


def test_the_destructive_level_holds_only_destructive_calls(portal: Sandbox, cli: Cli) -> None:
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "keep"}}).json()["result"]
    deletes = cli.with_env(B24_APPROVAL="destructive")
    added = deletes("crm.lead.add", "--params", '{"fields": {"TITLE": "ok"}}', "--confirm-write")
    assert added.code == 0
    gone = deletes("crm.lead.delete", "--params", f'{{"id": {lead}}}', "--confirm-destructive")
    assert gone.code == 3 and gone.error()["code"] == "APPROVAL_REQUIRED"
    assert _sent(portal, "crm.lead.delete") == 0
