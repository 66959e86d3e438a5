"""Asking the human who must approve a plan through MCP elicitation.

The operator sets ``B24_APPROVAL`` (off | destructive | writes, default writes): a plan whose risk
reaches that level (``guard.approval.needs_approval``, the pipeline's and the broker's answer
too) runs only after a human said yes. The MCP client shows the question (form
elicitation); the model cannot answer it. A client without elicitation cannot ask, so such a plan
is refused there; the operator may lower ``B24_APPROVAL`` to let the agent's own call suffice.

The question carries the plan's digest, and the run re-checks the stored plan against that digest
(``Guards.approved_plan``): what runs is exactly what the human saw. On the 2026-07-28 protocol
the SDK echoes the answer back through ``request_state``, bound to the question's text, so an
answer to another plan's question is never taken for this one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..display import for_a_person
from ..errors import B24Error, PolicyError
from ..guard.approval import needs_approval
from ..guard.plans import Plan, Review

__all__ = ["Approve", "Seen", "can_elicit", "declined", "question", "shown_whole", "unavailable"]

#: Longest question a human is asked: past it a plan is refused, never shown in part, because a
#: "yes" approves the whole plan and what was cut is what an injected agent would hide there.
QUESTION_MAX_CHARS = 60_000


class Approve(BaseModel):
    """The one field of the approval form."""

    approve: bool = Field(description="Yes runs this plan once, now; no leaves it unrun.")


@dataclass(frozen=True)
class Seen:
    """The plan as the approval step found it: its digest and question, or why it cannot run."""

    plan: Plan | None = None
    error: B24Error | None = None
    #: What the human is asked, when the plan needs one.
    question: str | None = None


def can_elicit(capabilities: Any) -> bool:
    """Whether the client declared form elicitation (a bare ``elicitation: {}`` counts)."""
    elicitation = getattr(capabilities, "elicitation", None)
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _text(plan: Plan) -> str:
    """What the human reads, whole: the call, its risk and target, the record as it is now and
    every param (a bulk plan: one line per call)."""
    expires = time.strftime("%H:%M:%S UTC", time.gmtime(plan.expires_at))
    lines = [
        f"Run this {plan.risk} call on the Bitrix24 portal {plan.portal}?",
        f"method: {plan.method} (REST {plan.api})",
    ]
    if plan.target:
        lines.append(f"record: {_json(plan.target)}")
    if plan.previews is not None:  # a bulk plan: what each call does, record by record
        lines.append(f"{len(plan.previews)} calls, each in full:")
        lines.extend(
            f"line {shown.get('line')}: {_json({k: v for k, v in shown.items() if k != 'line'})}"
            for shown in plan.previews
        )
    else:
        lines.append(f"params: {json.dumps(plan.params, ensure_ascii=False, indent=1)}")
    if plan.preview:
        lines.append(f"preview: {json.dumps(plan.preview, ensure_ascii=False, indent=1)}")
    lines.append(f"plan {plan.id} · expires {expires} · digest {plan.digest()[:16]}")
    return for_a_person("\n".join(lines))


def _too_long(what: str, length: int, then: str) -> PolicyError:
    return PolicyError(
        f"{what} is too long to show a human whole ({length:,} characters, at most "
        f"{QUESTION_MAX_CHARS:,}); {then}",
        code="APPROVAL_TOO_LARGE",
        hint="make smaller plans (fewer calls, shorter params) so each can be read whole",
    )


def question(plan: Plan) -> str:
    """The question, whole. Raises PolicyError when it does not fit in QUESTION_MAX_CHARS: a
    plan is never approved on a part of it."""
    text = _text(plan)
    if len(text) > QUESTION_MAX_CHARS:
        raise _too_long(f"plan {plan.id}", len(text), "nobody was asked and nothing was sent")
    return text


def shown_whole(level: str) -> Review:
    """b24_plan's check of a new plan (review8 M3): one a human must approve under
    ``B24_APPROVAL=level`` whose question could not be shown whole could never run, so it is
    refused before it is stored rather than kept on the state disk until it expires."""

    def review(plan: Plan) -> None:
        if needs_approval(plan.risk, level) and len(text := _text(plan)) > QUESTION_MAX_CHARS:
            raise _too_long(
                "this plan",
                len(text),
                f"B24_APPROVAL={level} needs one to approve it, so it was not stored",
            )

    return review


def declined(plan_id: str, action: Literal["decline", "cancel", "no"]) -> PolicyError:
    said = {"decline": "declined", "cancel": "cancelled", "no": "answered no to"}[action]
    return PolicyError(
        f"the human {said} plan {plan_id}; nothing was sent and the plan is still unrun",
        code="APPROVAL_DECLINED",
        hint="ask the human what to change, or run b24_execute_plan again if they change their "
        "mind before the plan expires",
    )


def unavailable(plan: Plan, approval: str) -> PolicyError:
    return PolicyError(
        f"plan {plan.id} is a {plan.risk} call and B24_APPROVAL={approval} needs a human to "
        "approve it, but this MCP client cannot ask one (it does not support elicitation); "
        "nothing was sent",
        code="APPROVAL_UNAVAILABLE",
        hint="use an MCP client that supports elicitation, or run the plan where a human "
        "approves it; the operator decides B24_APPROVAL",
    )
