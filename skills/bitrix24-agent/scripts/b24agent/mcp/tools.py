"""What each MCP tool does, on top of ``guard/pipeline.py``; ``server`` only declares them.

Every tool builds the same ``CallRequest`` the CLI builds, so the pipeline applies the same packs,
ceiling, plans, idempotency, limiter and audit; the request's ``origin`` puts the MCP client and
tool into the audit line. The agent gets no flag that widens a guard: ``b24_call`` runs reads
only, a write is planned with ``b24_plan`` and runs through ``b24_execute_plan``, which a human
approves (``approval``). A tool returns a result or a tool error, never raises: the SDK would
otherwise turn our message into a bare "Error executing tool".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TextIO

from mcp.server.mcpserver import Context, Elicit
from mcp.server.mcpserver.resolve import AcceptedElicitation, ElicitationResult
from mcp.types import CallToolResult

from .. import catalog
from ..cli.common import as_b24_error
from ..cli.output import Printer
from ..errors import B24Error, UsageError
from ..guard import policy
from ..guard.approval import audit_decision, needs_approval
from ..guard.pipeline import Call, CallOutcome, CallRequest, Guards, Mode, Pipeline
from ..guard.plans import Plan, PlanStore
from ..redact import Redactor
from ..settings import Settings
from .approval import Approve, Seen, can_elicit, declined, question, shown_whole, unavailable
from .exports import ExportFolder
from .shaping import error_result, fit_plan, fit_rows, ok_result, to_text

__all__ = ["CANNOT_ASK", "NOT_NEEDED", "ToolBox", "plan_answer"]

Api = Literal["v2", "v3"]
#: What the approval resolver answers when it asks nobody.
NOT_NEEDED = "not-needed"
CANNOT_ASK = "cannot-ask"
#: Most calls one b24_plan_batch may hold (they run 50 to a batch request).
MAX_BATCH_CALLS = 1000


def _start_of(params: Mapping[str, Any]) -> int:
    try:
        return max(0, int(params.get("start") or 0))
    except (TypeError, ValueError):
        return 0


def reads_only(method: str, params: Mapping[str, Any]) -> None:
    """Refuse a call that would change anything before it is handed on (b24-mcp in front of a
    broker: the refusal is the agent side's; its own pipeline checks ``Guards.reads_only``)."""
    policy.check_reads_only(policy.assess([(method, params, None)]))


def _per_call(outcomes: Iterable[CallOutcome]) -> dict[str, Any]:
    """A bulk plan's outcomes as a list answer: one entry per call, a result or an error."""
    rows: list[dict[str, Any]] = []
    for item in outcomes:
        where = {"line": item.call.line, "method": item.call.method}
        rows.append(
            {**where, **item.error.to_json()} if item.error else {**where, "result": item.result}
        )
    return {"result": rows, "failed": sum(1 for row in rows if "error" in row)}


def plan_answer(summary: Mapping[str, Any], approval: str, whole: str) -> dict[str, Any]:
    """What b24_plan and b24_plan_batch answer: the plan (its summary past the size cap, with
    ``whole`` saying where it is shown whole), who approves it and the call that runs it."""
    answer = {
        "plan_id": summary["id"],
        "plan": summary,
        "approval": approval,
        "next": {"tool": "b24_execute_plan", "arguments": {"plan_id": summary["id"]}},
    }
    return fit_plan(answer, whole)


def _batch_lines(calls: list[dict[str, Any]]) -> tuple[Call, ...]:
    """``calls`` as a bulk plan's lines, each checked as a ``--batch-file`` line is (a method
    name, params an object); UsageError naming the call otherwise."""
    from ..rest.schemas import validate_batch_line  # jsonschema is only paid for when used

    if not 1 <= len(calls) <= MAX_BATCH_CALLS:
        raise UsageError(
            f"b24_plan_batch takes 1 to {MAX_BATCH_CALLS} calls, got {len(calls)}",
            code="USAGE",
            hint=f"split the work into plans of at most {MAX_BATCH_CALLS} calls",
        )
    return tuple(
        Call(*validate_batch_line(call, where=f"b24_plan_batch call {n}"), n)
        for n, call in enumerate(calls, 1)
    )


class ToolBox:
    """The tools of one server: its settings, the transport it serves, the export folder."""

    def __init__(self, settings: Settings, transport: str) -> None:
        self.settings = settings
        self.transport = transport
        self.folder = ExportFolder(settings.mcp_export_dir, settings.mcp_export_max_mb << 20)
        self.folder.tidy()  # what servers killed mid-export left must not eat the budget
        self._mask = Redactor(settings.secrets()).mask

    # --- the frame every tool runs in ----------------------------------------------------------
    def origin(self, tool: str, ctx: Context) -> dict[str, str]:
        """Who asked, for the audit line: the MCP client as it named itself, and the tool."""
        params = ctx.session.client_params if ctx is not None else None
        info = params.client_info if params is not None else None
        client = f"{info.name} {info.version}".strip()[:100] if info is not None else "unknown"
        return {"via": "mcp", "transport": self.transport, "client": client, "tool": tool}

    def _run(self, work: Callable[[Pipeline], Any]) -> CallToolResult:
        """Run ``work`` with a fresh pipeline; its document or error becomes the result."""
        pipeline: Pipeline | None = None
        try:
            pipeline = Pipeline(self.settings)
            with pipeline:
                return ok_result(work(pipeline), pipeline.mask, self._spill(pipeline.mask))
        except Exception as exc:
            # A read's answer that cannot be saved (a full disk) is a local failure, not a
            # write that may have run.
            wrote = pipeline is not None and pipeline.wrote
            mask = pipeline.mask if pipeline is not None else self._mask
            return error_result(as_b24_error(exc, dispatched=wrote), mask)

    def _spill(self, mask: Callable[[str], str]) -> Callable[[Any], dict[str, Any]]:
        """What saves an answer too big to return and says so in the ``truncated`` marker,
        masking with ``mask``: the pipeline's, which knows the tokens refreshed since start."""

        def save(document: Any) -> dict[str, Any]:
            path = self.folder.write_document("answer", mask(to_text(document)))
            return {
                "saved_to": str(path),
                "hint": "read the file, or narrow the call (select, filter)",
            }

        return save

    # --- reads ---------------------------------------------------------------------------------
    def call(self, ctx: Context, method: str, params: dict[str, Any], api: Api) -> CallToolResult:
        def work(pipeline: Pipeline) -> Any:
            request = CallRequest(
                "call",
                (Call(method, params),),
                api=api,
                guards=Guards(reads_only=True),  # refused inside the pipeline: audited
                origin=self.origin("b24_call", ctx),
            )
            outcome = pipeline.run(request)
            assert outcome.response is not None
            return fit_rows(outcome.response.body, _start_of(params), self._spill(pipeline.mask))

        return self._run(work)

    def export(self, ctx: Context, method: str, params: dict[str, Any]) -> CallToolResult:
        def work(pipeline: Pipeline) -> Any:
            request = CallRequest(
                "export", (Call(method, params),), origin=self.origin("b24_export", ctx)
            )
            outcome = pipeline.run(request)
            assert outcome.stream is not None

            def write(handle: TextIO, rows: Any) -> int:
                return Printer(handle, mask=pipeline.mask, compact=True).lines(rows)

            path, rows = self.folder.write_lines(method, outcome.stream, write)
            return {
                "path": str(path),
                "rows": rows,
                "requests": pipeline.requests_sent,
                "method": method,
            }

        return self._run(work)

    # --- plans ---------------------------------------------------------------------------------
    def plan(self, ctx: Context, method: str, params: dict[str, Any], api: Api) -> CallToolResult:
        return self._plan(ctx, "b24_plan", "call", (Call(method, params),), api)

    def plan_batch(self, ctx: Context, calls: list[dict[str, Any]]) -> CallToolResult:
        """A list of calls as one bulk plan (the guard's, as ``--plan-only --batch-file``): every
        call checked against packs and gates, a preview per record; it runs 50 calls a request,
        idempotent as a whole."""
        try:
            lines = _batch_lines(calls)
        except UsageError as exc:  # a tool error naming the call, not the SDK's bare one
            return error_result(exc, self._mask)
        return self._plan(ctx, "b24_plan_batch", "batch_file", lines, "v2")

    def _plan(
        self, ctx: Context, tool: str, mode: Mode, calls: tuple[Call, ...], api: str
    ) -> CallToolResult:
        level = self.settings.approval_level(enforced=True)

        def work(pipeline: Pipeline) -> Any:
            # A plan whose approval question could not be shown could never run: not stored.
            guards = Guards(plan_only=True, review=shown_whole(level))
            request = CallRequest(
                mode, calls, api=api, guards=guards, origin=self.origin(tool, ctx)
            )
            summary = pipeline.run(request).document["plan"]
            human = needs_approval(summary["risk"], level)
            approval = (
                "a human will be asked to approve it"
                if human
                else "it runs when you execute it (B24_APPROVAL allows that)"
            )
            return plan_answer(summary, approval, self._whole(summary["id"]))

        return self._run(work)

    def _whole(self, plan_id: str) -> str:
        """Where a plan too big for a result is read whole."""
        if self.settings.state_backend == "file":
            stored = str(self.settings.plan_dir / f"{plan_id}.json")
        else:
            stored = f"the state store (B24_STATE_BACKEND), as plans:{plan_id}.json"
        return (
            "b24_execute_plan shows it whole to the human who approves it (when one must); "
            f"the operator reads it in {stored}"
        )

    # --- executing a plan, once a human said yes -----------------------------------------------
    def seen(self, plan_id: str) -> Seen:
        """The stored plan, checked (signature, portal, expiry, unspent), or why it cannot run."""
        store = PlanStore.of(self.settings)
        try:
            plan = store.load(plan_id)
            human = needs_approval(plan.risk, self.settings.approval_level(enforced=True))
            return Seen(plan=plan, question=question(plan) if human else None)
        except B24Error as exc:  # question() refuses a plan too long to be shown whole
            return Seen(error=exc)

    def ask(self, seen: Seen, ctx: Context) -> Elicit[Approve] | str:
        """The approval question for the human, or why nobody is asked."""
        if seen.question is None:
            return NOT_NEEDED
        if not can_elicit(ctx.client_capabilities):
            return CANNOT_ASK
        return Elicit(self._mask(seen.question), Approve)

    def execute(
        self, ctx: Context, plan_id: str, seen: Seen, answer: ElicitationResult[Approve]
    ) -> CallToolResult:
        def work(pipeline: Pipeline) -> Any:
            if seen.error is not None:
                raise seen.error
            plan = seen.plan
            assert plan is not None
            self._decided(plan, answer, self.origin("b24_execute_plan", ctx))
            guards = Guards(
                execute_plan=plan.id, confirm_destructive=True, approved_plan=plan.digest()
            )
            request = CallRequest(
                "call", (Call(""),), guards=guards, origin=self.origin("b24_execute_plan", ctx)
            )
            outcome = pipeline.run(request)
            if outcome.stream is not None:  # a bulk plan: one outcome per call, in order
                body: Mapping[str, Any] = _per_call(outcome.stream)
            else:
                assert outcome.response is not None
                body = outcome.response.body
            return {
                "plan_id": plan.id,
                "ran": True,
                **fit_rows(body, 0, self._spill(pipeline.mask)),
            }

        return self._run(work)

    def _decided(
        self, plan: Plan, answer: ElicitationResult[Approve], asker: dict[str, str]
    ) -> None:
        """Write the human's answer to the audit chain; raise unless it let the plan run. The
        client's name in the line is its own claim (``origin``), recorded, never trusted."""
        refusal: B24Error | None = None
        if not isinstance(answer, AcceptedElicitation):
            refusal = declined(plan.id, answer.action)
        elif answer.data == CANNOT_ASK:
            refusal = unavailable(plan, self.settings.approval_level(enforced=True))
        elif isinstance(answer.data, Approve) and not answer.data.approve:
            refusal = declined(plan.id, "no")
        if refusal is not None:
            audit_decision(self.settings, plan, "declined", asker, error=refusal.code)
            raise refusal
        if isinstance(answer.data, Approve):  # a person said yes (not: nobody needed asking)
            audit_decision(self.settings, plan, "approved", asker)

    # --- the catalog ---------------------------------------------------------------------------
    def explain(self, methods: list[str]) -> CallToolResult:
        return self._run(lambda _: [catalog.explain(m) for m in methods])

    def packs(self) -> CallToolResult:
        enabled = [p for p in self.settings.packs if p != "none"]
        return self._run(lambda _: {"enabled": enabled, "packs": catalog.packs()})
