"""B24_APPROVAL in plain CLI mode: a write above it never runs as if a person had approved it.

The agent runs as the operator's user here and could approve its own plan, so approval cannot
be enforced; the CLI refuses such writes (exit 3, nothing sent) and says where it is enforced.
Broker mode, where a person does approve, is tested in test_broker.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from b24agent.guard import approval
from cli_support import Cli
from conftest import Sandbox


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli.on_webhook(portal, tmp_path)


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
    assert portal.sent("crm.lead.add") == 0
    assert approving("user.current").code == 0  # reads are not held up


def test_the_destructive_level_holds_only_destructive_calls(portal: Sandbox, cli: Cli) -> None:
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "keep"}}).json()["result"]
    deletes = cli.with_env(B24_APPROVAL="destructive")
    added = deletes("crm.lead.add", "--params", '{"fields": {"TITLE": "ok"}}', "--confirm-write")
    assert added.code == 0
    gone = deletes("crm.lead.delete", "--params", f'{{"id": {lead}}}', "--confirm-destructive")
    assert gone.code == 3 and gone.error()["code"] == "APPROVAL_REQUIRED"
    assert portal.sent("crm.lead.delete") == 0


def test_a_decision_binds_the_digest_is_final_and_never_the_makers(tmp_path: Path) -> None:
    """The decision store the broker's admin socket writes (library level)."""
    from b24agent.backends.file import FileDocuments
    from b24agent.errors import ConflictError, PolicyError
    from b24agent.guard.approval import DecisionStore, WaitForDecision
    from b24agent.guard.plans import Context, PlanStore
    from b24agent.redact import Redactor

    plans = PlanStore(FileDocuments(tmp_path / "plans"), portal="127.0.0.1_9000", ttl_s=600)
    plan = plans.create(
        method="crm.lead.add",
        api="v2",
        params={"fields": {"TITLE": "x"}},
        risk="write",
        read=lambda method, params: None,
        mask=Redactor([]).mask_obj,
        context=Context(made_by={"uid": 1001, "via": "broker"}),
    )
    decisions = DecisionStore(plans)
    with pytest.raises(ConflictError, match="changed since it was shown"):
        decisions.decide(plan.id, "0" * 64, "approved", {"uid": 1002})
    with pytest.raises(PolicyError, match="cannot approve"):
        decisions.decide(plan.id, plan.digest(), "approved", {"uid": 1001})
    decisions.decide(plan.id, plan.digest(), "denied", {"uid": 1002})
    with pytest.raises(ConflictError, match="final"):
        decisions.decide(plan.id, plan.digest(), "approved", {"uid": 1002})
    with pytest.raises(PolicyError, match="declined"):
        WaitForDecision().wait(plans, plan, 0)
    record = tmp_path / "plans" / f"{plan.id}.decision"
    record.write_text(record.read_text().replace('"denied"', '"approved"'))
    with pytest.raises(ConflictError, match="decision file was changed"):
        WaitForDecision().wait(plans, plan, 0)


@pytest.mark.parametrize(
    ("level", "asked"),
    [
        ("off", set()),
        ("destructive", {"destructive", "unknown"}),
        ("writes", {"write", "destructive", "unknown"}),
    ],
)
def test_one_answer_to_who_needs_a_human_and_an_unknown_risk_is_destructive(
    level: str, asked: set[str]
) -> None:
    """The pipeline, the broker and the MCP server all ask guard.approval.needs_approval."""
    risks = ("read", "write", "destructive", "unknown")
    assert {risk for risk in risks if approval.needs_approval(risk, level)} == asked
