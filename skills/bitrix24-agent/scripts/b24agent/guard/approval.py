"""A human approves a plan before it runs: when it is needed, how a decision is kept, and waiting.

``--confirm-write`` is typed by the agent itself, so it proves nothing about a human. Above the
operator's ``B24_APPROVAL`` (off | destructive | writes) a write runs only from a plan that a
person approved through a channel the agent does not hold: ``b24-broker approve`` in broker mode,
MCP elicitation in the MCP server. The pipeline asks an ``Approver``; in plain CLI mode there is
none, because the agent runs as the operator's user and could approve itself, so such writes are
refused rather than run as if approved.

A decision binds the plan's digest (``PlanStore.digest``): a plan changed after it was approved
needs a new approval. Decisions are files next to the plans (``<id>.decision``), signed with the
plans' key and made with an exclusive create, so a decision is final: approved once, or denied.
The uid that made a plan never approves it.

Every decision is also a line of the operator's audit chain (``audit_decision``; keyed in broker
mode): who decided (the approver's uid, or the MCP client as it named itself), the plan and its
digest, the verdict and the time. A declined or unanswerable MCP question is a line too.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import ConfigError, ConflictError, PolicyError
from .audit import AuditEvent, Outcome, write_outside_a_call
from .plans import Plan, PlanStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Approver",
    "Decision",
    "DecisionStore",
    "WaitForDecision",
    "audit_decision",
    "needs_approval",
    "pending",
    "required",
    "unenforceable",
]

Verdict = Literal["approved", "denied"]
_DECISION_SCHEMA = {"type": "object", "required": ["decision", "signature"]}
#: How often a waiting execution looks for the decision (seconds).
POLL_S = 0.2


#: Risks in rising order; a risk not named here counts as destructive (fail closed).
_RANK = {"read": 0, "write": 1, "destructive": 2}
#: The lowest rank that needs a human, per B24_APPROVAL value (an unknown level: every write).
_NEEDS_HUMAN_FROM = {"off": 3, "destructive": 2, "writes": 1}


def needs_approval(risk: str, level: str) -> bool:
    """Whether a call of ``risk`` needs a human under ``B24_APPROVAL=level``: the one answer
    the pipeline, the broker and the MCP server all use."""
    return _RANK.get(risk, 2) >= _NEEDS_HUMAN_FROM.get(level, 1)


def required(level: str) -> PolicyError:
    """A direct write above the approval level: it must become a plan a human approves."""
    return PolicyError(
        f"the operator requires a human's approval for this call (B24_APPROVAL={level})",
        code="APPROVAL_REQUIRED",
        hint="store it with --plan-only and run --execute-plan ID; the execution waits until a "
        "person approves the plan (b24-broker approve ID, or the MCP client's prompt)",
    )


def pending(plan: Plan, *, enforced: bool) -> str:
    """What ``--plan-only`` says about the approval a new plan needs."""
    if not enforced:
        return (
            "needed, and plain CLI mode cannot enforce it: --execute-plan will refuse this plan "
            "(B24_APPROVAL); the operator's broker or MCP server can run it"
        )
    return (
        f"pending: --execute-plan waits until a person approves it "
        f"(b24-broker approve {plan.id}; digest {plan.digest()})"
    )


def unenforceable(level: str) -> PolicyError:
    """Approval is configured but this mode has no channel the agent does not hold."""
    return PolicyError(
        f"B24_APPROVAL={level} needs a human's approval, which plain CLI mode cannot enforce: "
        "the agent runs as the operator's user and could approve itself",
        code="APPROVAL_UNENFORCEABLE",
        hint="the operator runs b24-broker (and sets B24_BROKER for the agent) or the MCP "
        "server; nothing was sent",
    )


@dataclass(frozen=True)
class Decision:
    """A person's verdict on one plan, bound to the plan's digest."""

    plan_id: str
    digest: str
    verdict: Verdict
    by: dict[str, Any]
    at: float


class Approver(Protocol):
    """A channel the agent does not hold. ``wait`` returns once a person approved ``plan`` (of
    ``plans``) as it is now, within ``wait_s`` seconds; it raises PolicyError when the plan is
    denied or nobody decided, ConflictError when the plan changed after it was approved."""

    def wait(self, plans: PlanStore, plan: Plan, wait_s: float) -> None: ...


class DecisionStore:
    """Decisions on the plans of one PlanStore, signed with its key."""

    def __init__(self, plans: PlanStore) -> None:
        self.plans = plans

    @staticmethod
    def _name(plan_id: str) -> str:
        return f"{plan_id}.decision"

    def decide(self, plan_id: str, digest: str, verdict: Verdict, by: Mapping[str, Any]) -> Plan:
        """Record ``verdict`` on the plan whose digest the person saw; returns the plan.

        Refused (ConflictError) when the plan changed since it was shown, when ``by`` is the uid
        that made it, or when a decision exists already.
        """
        plan = self.plans.load(plan_id)
        if not hmac.compare_digest(plan.digest(), digest):
            raise _conflict(plan_id, "it changed since it was shown", "APPROVAL_STALE")
        maker = (plan.made_by or {}).get("uid")
        if verdict == "approved" and maker is not None and maker == by.get("uid"):
            raise PolicyError(
                f"plan {plan_id}: the user who made a plan cannot approve it (uid {maker})",
                code="APPROVAL_SELF",
                hint="another person in the operator's group approves it",
            )
        body = {"plan": plan_id, "digest": digest, "verdict": verdict, "by": dict(by)}
        body["at"] = time.time()
        record = {"decision": body, "signature": self.plans.sign(body)}
        if not self.plans.plans.create(
            self._name(plan_id), record, expires_at=self.plans.kept_until(plan)
        ):
            raise _conflict(plan_id, "it was decided already; a decision is final", "DECIDED")
        return plan

    def decision(self, plan_id: str) -> Decision | None:
        """The signed decision on ``plan_id``, or None while nobody decided."""
        stored = self.plans.plans.read(self._name(plan_id), schema=_DECISION_SCHEMA)
        if stored is None:
            return None
        body = stored["decision"]
        if not hmac.compare_digest(str(stored["signature"]), self.plans.sign(body)):
            raise _conflict(plan_id, "its decision file was changed", "APPROVAL_TAMPERED")
        return Decision(body["plan"], body["digest"], body["verdict"], body["by"], body["at"])


class WaitForDecision:
    """The broker's approver: waits for ``b24-broker approve`` or ``deny`` on the plan."""

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep

    def wait(self, plans: PlanStore, plan: Plan, wait_s: float) -> None:
        decisions = DecisionStore(plans)
        deadline = time.monotonic() + wait_s
        while True:
            decision = decisions.decision(plan.id)
            if decision is not None:
                break
            if time.monotonic() >= deadline:
                raise PolicyError(
                    f"plan {plan.id} waits for a human's approval; nobody decided within "
                    f"{wait_s:g} s (B24_APPROVAL_WAIT_SEC)",
                    code="APPROVAL_PENDING",
                    hint="nothing was sent; ask a person to run b24-broker approve with this id, "
                    "then repeat the same --execute-plan command",
                    retryable=True,
                )
            self.sleep(POLL_S)
        if decision.verdict != "approved":
            raise PolicyError(
                f"plan {plan.id} was declined by uid {decision.by.get('uid')}",
                code="APPROVAL_DENIED",
                hint="nothing was sent; the plan will not run",
            )
        if not hmac.compare_digest(decision.digest, plan.digest()):
            raise _conflict(plan.id, "it changed after it was approved", "APPROVAL_STALE")


def audit_decision(
    settings: Settings,
    plan: Plan,
    verdict: Outcome,
    by: Mapping[str, Any],
    *,
    error: str | None = None,
) -> None:
    """Write a person's decision on ``plan`` to the operator's audit chain. ``by`` is who
    decided, as recorded (the kernel's uid for ``b24-broker``; the MCP client's own claim)."""
    event = AuditEvent(
        request_id=uuid.uuid4().hex,
        portal=plan.portal,
        method=plan.method,
        risk=plan.risk,
        outcome=verdict,
        duration_ms=0.0,
        params=plan.params,
        api=plan.api,
        plan_id=plan.id,
        error=error,
        origin=by,
        plan_digest=plan.digest(),
    )
    try:
        write_outside_a_call(settings, event)
    except OSError as exc:
        raise ConfigError(
            f"the decision on plan {plan.id} ({verdict}) stands, but the audit log "
            f"{settings.audit_file} "
            f"could not be written: {exc.strerror or exc}",
            code="AUDIT_UNWRITABLE",
            hint="fix B24_AUDIT_FILE (or the folder it names) so the log can be written",
        ) from None


def _conflict(plan_id: str, why: str, code: str) -> ConflictError:
    return ConflictError(
        f"plan {plan_id} refused: {why}",
        code=code,
        hint="make a new plan with --plan-only; it needs its own approval",
    )
