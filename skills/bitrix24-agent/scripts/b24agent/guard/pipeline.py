"""The guarded call path: every CLI call passes here, through the same stages in the same order.

Why one place: the guard rails (packs, confirmations, plans, idempotency, audit) are only worth
anything if no path around them exists. The CLI builds a ``CallRequest``, this module decides,
calls the client and hands back an ``Outcome`` for the CLI to print. Stages of ``Pipeline.run``:

0. widening     a flag that lifts a guard runs only where the operator allowed it by name
1. assess       the risk of every call; a ``batch`` is judged command by command, unknown
                methods are writes (policy.assess)
2. policy       the operator's ceiling, packs / method allowlist, read-only, confirmation
                gates by risk, require-plan
                (policy.authorize; a plan stands for --confirm-write, not --confirm-destructive)
3. plan         ``--plan-only`` stores the call, or a batch file as one bulk plan
                (plans.PlanStore); ``--execute-plan ID`` loads, checks and claims the plan, then
                sends exactly the stored calls; a run refused before anything was sent gives
                the claim back
4. idempotency  a write runs under a key, explicit or derived from the call itself, through
                safewrite.run_write: replay, conflict, reconcile, or send once
5. dispatch     client.call, client.iter_all (export) or client.call_many (batch file)
6. audit        one hash-chained line per request, whatever the outcome (audit.AuditLog);
                a line the log's lock kept out (interrupted, timed out) waits for the next write

Plan execution does not take an idempotency key: the plan's one-time claim already makes it run
at most once. Reads are never idempotency-tracked.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from filelock import FileLock, Timeout

from ..backends import open_backend
from ..errors import (
    ApiError,
    AuthError,
    B24Error,
    ConfigError,
    ConflictError,
    Interrupted,
    NotFoundError,
    OutcomeUnknownError,
    PolicyError,
    TransientError,
    UsageError,
    local_failure,
    unexpected_after_sending,
)
from ..redact import Redactor
from ..rest.idempotency_key import validate_idempotency_key
from ..rest.interrupts import INTERRUPTS, interruption_exit_code
from ..rest.results import CallResult
from ..rest.sendable import check_sendable
from ..state import LOCK_TIMEOUT_S, check_state_file
from . import approval, deferred, drain, policy
from .audit import AuditEvent, AuditLog, audit_key
from .auditchain import check
from .batchwrite import BATCH_FILE, LineCall, batch_params, run_batch
from .idempotency import IdempotencyStore, auto_key
from .plans import Context, Plan, PlanStore, Review
from .safewrite import Send, WriteOutcome, run_write

if TYPE_CHECKING:
    from ..rest.client import Bitrix24Client
    from ..settings import Settings

__all__ = [
    "Call",
    "CallOutcome",
    "CallRequest",
    "Guards",
    "Outcome",
    "Pipeline",
    "verify_audit",
    "widening_flags",
]

Mode = Literal["call", "export", "batch_file"]
#: Failures that prove nothing reached the portal's method: a plan refused so stays unspent.
_NOT_SENT = (ApiError, UsageError, PolicyError, ConfigError, AuthError, TransientError)


@dataclass(frozen=True)
class Call:
    """One REST call; ``line`` is its batch-file line, used in messages and output."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None

    @property
    def label(self) -> str:
        return f"line {self.line} ({self.method})" if self.line else self.method


@dataclass(frozen=True)
class Guards:
    """This run's safety flags; settings-level ones (packs, require_plan) live in Settings."""

    confirm_write: bool = False
    confirm_destructive: bool = False
    allow_unlisted: bool = False
    plan_only: bool = False
    execute_plan: str | None = None
    idempotency_key: str | None = None
    idempotency: bool = True
    idempotency_resolve: Literal["done", "failed"] | None = None
    audit: bool = True
    #: ``Plan.digest()`` of the plan a human approved (MCP elicitation): the plan runs only if
    #: it is still exactly that one.
    approved_plan: str | None = None
    #: Only reads may run (MCP ``b24_call``): a write is refused here, so its line is audited.
    reads_only: bool = False
    #: With ``plan_only``: checks the new plan before it is stored and raises to refuse it (MCP:
    #: a plan whose approval question could not be shown whole is never stored).
    review: Review | None = None


@dataclass(frozen=True)
class CallRequest:
    """What the CLI asks for: one call, a full export of one list call, or a batch file."""

    mode: Mode
    calls: tuple[Call, ...]
    api: str = "v2"
    limit: int | None = None
    guards: Guards = field(default_factory=Guards)
    #: Batches of a batch file sent at once (call_many's ``parallel``).
    parallel: int = 1
    #: The calls' params were validated already (the CLI checks a batch file as it reads it).
    params_checked: bool = False
    #: Who asked, for the audit line, when it is not the CLI (the MCP server names its client).
    origin: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CallOutcome:
    """The outcome of one batch-file call, in file order: a result or an error."""

    call: Call
    result: Any = None
    error: B24Error | None = None


@dataclass
class Outcome:
    """What the CLI prints. ``response`` for a call; ``stream`` yields dict rows for an export
    and ``CallOutcome`` for a batch file, lazily, so output starts before the work ends;
    ``document`` is printed as it is (a stored plan). ``notes`` go to stderr after a success."""

    kind: Literal["response", "items", "calls", "document"]
    response: CallResult | None = None
    stream: Iterator[Any] | None = None
    document: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Record:
    """What this request's audit line will say; the stages fill it in as they learn it."""

    method: str
    params: Any
    api: str
    risk: str = "write"
    outcome: str = "ok"
    plan_id: str | None = None
    idempotency_key: str | None = None
    started: float = field(default_factory=time.monotonic)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Set once the line is being written (signals held): an interruption after that needs
    #: no line of its own, and one before it does.
    audit_started: bool = False

    @classmethod
    def of(cls, request: CallRequest) -> _Record:
        if request.mode == "batch_file":
            return cls(BATCH_FILE, batch_params(request.calls), request.api)
        first = request.calls[0]
        return cls(first.method, dict(first.params), request.api)


def _program() -> str:
    """How this CLI was started, for the "run it with" line of a plan."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "b24"
    return f"python3 {argv0}" if argv0.endswith(".py") else Path(argv0).name


def _stored_response(body: Mapping[str, Any]) -> CallResult:
    """A CallResult rebuilt from a stored (or reconciled) body; nothing was sent for it."""
    return CallResult(
        result=body.get("result"),
        total=body.get("total"),
        next=body.get("next"),
        time=dict(body.get("time") or {}),
        body=dict(body),
        http_status=200,
        replayed=True,
    )


def widening_flags(guards: Guards) -> list[str]:
    """The flags of this run that would lift a guard (settings.WIDENING_FLAGS)."""
    wanted = {
        "allow-unlisted": guards.allow_unlisted,
        "no-audit": not guards.audit,
        "no-idempotency": not guards.idempotency,
    }
    return [flag for flag, on in wanted.items() if on]


class Pipeline:
    """Runs requests for one portal; owns the client, so use it as a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        progress: Callable[[int], None] | None = None,
        approver: approval.Approver | None = None,
    ) -> None:
        """``approver``: the channel through which a person approves plans above
        ``B24_APPROVAL`` (the broker's; None in plain CLI mode, where such plans are refused,
        and for the MCP server, which asks before it runs a plan: ``Guards.approved_plan``)."""
        self._settings = settings
        self._progress = progress
        self._approver = approver
        # Read before anything is sent: a keyed chain whose key is unreadable fails the call now,
        # not after the write, when its audit line could not be written.
        self._audit_key = audit_key(settings)
        self._client: Bitrix24Client | None = None
        self._wrote = False  # a write left before the client was closed
        self._redactor = Redactor(settings.secrets())

    def mask(self, text: str) -> str:
        """Mask secrets in ``text``, including tokens the client learned while running."""
        return self._redactor.mask(text)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._wrote = self.wrote
            self._client.close()
            self._client = None

    @property
    def wrote(self) -> bool:
        """Whether a write request left (it may have run), also once closed: only then may a
        later failure say that a write may have happened."""
        return self._wrote or (self._client is not None and self._client.writes_out > 0)

    @property
    def requests_sent(self) -> int:
        """HTTP requests this pipeline's client has sent so far."""
        return self._client.requests_sent if self._client is not None else 0

    def _get_client(self) -> Bitrix24Client:
        if self._client is None:
            from ..rest.client import Bitrix24Client  # requests is imported only when calling

            self._client = Bitrix24Client(self._settings)
            self._redactor = self._client.redactor
        return self._client

    def _read(self, method: str, params: Mapping[str, Any]) -> Any:
        """A read made for the safety layer itself (plan previews, staleness, reconciling)."""
        return self._get_client().call(method, params, write=False).result

    def _gates(self, guards: Guards) -> policy.Gates:
        settings = self._settings
        return policy.Gates(
            packs=settings.packs,
            method_allowlist=settings.method_allowlist,
            allow_unlisted=guards.allow_unlisted,
            confirm_write=guards.confirm_write,
            confirm_destructive=guards.confirm_destructive,
            require_plan=settings.require_plan,
            read_only=settings.read_only,
            ceilings=settings.ceilings,
        )

    def _approval_level(self) -> str:
        return self._settings.approval_level(enforced=self._approver is not None)

    def _plans(self) -> PlanStore:
        return PlanStore.of(self._settings)

    # --- the run ---------------------------------------------------------------------------------
    def run(self, request: CallRequest) -> Outcome:
        """Check every guard for every call first, then dispatch; audit whatever happens."""
        # A planted link or FIFO in the audit's place stops the run before anything is sent.
        check_state_file(Path(self._settings.audit_file))
        record = _Record.of(request)
        try:
            policy.check_widening(widening_flags(request.guards), self._settings.allowed_flags)
            outcome = self._run(request, record)
            # Inside the try: a relayed signal that strikes after the portal answered but before
            # the line is being written is audited as the interruption, not lost.
            if outcome.stream is None:
                self._audit_success(request, record)
        except BaseException as exc:
            self._audit_failure(request, record, exc)
        if outcome.stream is not None:
            outcome.stream = self._audited(outcome.stream, request, record)
        return outcome

    def _run(self, request: CallRequest, record: _Record) -> Outcome:
        guards = request.guards
        if guards.execute_plan:
            return self._execute_plan(request, record)
        try:
            for call in request.calls:
                check_sendable(call.params)
        except UsageError as exc:
            # The audit line names the refused field instead of digesting params that cannot
            # be encoded or walked (nested thousands deep, invalid Unicode).
            record.params = {"unsendable": exc.details.get("field")}
            raise
        assessment = policy.assess(
            (c.method, c.params, c.label if c.line else None) for c in request.calls
        )
        record.risk = assessment.risk
        if request.mode == "export" and assessment.writes:
            raise UsageError(
                f"{request.calls[0].method} is not a read: an export reads a list method "
                "page by page, and would send this write again for every page; nothing was sent",
                code="EXPORT_OF_WRITE",
                hint="make the call once, not as an export",
            )
        if guards.reads_only:
            policy.check_reads_only(assessment)
        policy.authorize(assessment, self._gates(guards), "plan" if guards.plan_only else "call")
        # The operator's named worker drains the queue unattended; anyone else never through
        # the broker (guard/drain.py). Its checkpoint, not idempotency, makes repeats safe.
        unattended = drain.allowed_drain(
            request.origin,
            (c.method for c in assessment.commands),
            self._settings.broker_drainers,
        )
        if guards.plan_only:
            return self._make_plan(request, assessment, record)
        if not unattended and approval.needs_approval(assessment.risk, self._approval_level()):
            raise approval.required(self._approval_level())
        if (
            unattended
            or request.mode == "export"
            or not assessment.writes
            or not guards.idempotency
        ):
            return self._dispatch(request)
        if request.mode == "batch_file":
            return self._batch_file_once(request, record)
        return self._call_once(request, record)

    def _dispatch(self, request: CallRequest) -> Outcome:
        client = self._get_client()
        first = request.calls[0]
        if request.mode == "call":
            response = client.call(first.method, first.params, api=request.api)
            return Outcome("response", response=response)
        if request.mode == "export":
            rows = client.iter_all(
                first.method, first.params, limit=request.limit, progress=self._progress
            )
            return Outcome("items", stream=rows)
        return Outcome("calls", stream=self._call_many(request))

    def _call_many(self, request: CallRequest) -> Iterator[CallOutcome]:
        calls = request.calls
        outcomes = self._get_client().call_many(
            ((call.method, call.params) for call in calls),
            progress=self._progress,
            parallel=request.parallel,
            params_checked=request.params_checked,
        )
        return (CallOutcome(calls[o.index], o.result, o.error) for o in outcomes)

    # --- plans -----------------------------------------------------------------------------------
    def _make_plan(
        self, request: CallRequest, assessment: policy.Assessment, record: _Record
    ) -> Outcome:
        settings = self._settings
        gates = self._gates(request.guards)
        context = Context(
            api=request.api,
            packs=gates.enabled_packs,
            method_allowlist=gates.method_allowlist,
            auth_mode=settings.auth_mode,
            env_file=str(settings.env_file) if settings.env_file else None,
            unlisted=not policy.listed(assessment, gates),
            made_by=dict(request.origin) if request.origin else None,
        )
        mask = self._redactor.mask_obj
        if request.mode == "batch_file":
            plan = self._plans().create_bulk(
                method=BATCH_FILE,
                calls=[(c.method, c.params, c.line or 0) for c in request.calls],
                risk=assessment.risk,
                read_many=self._read_many,
                mask=mask,
                context=context,
                review=request.guards.review,
            )
        else:
            call = request.calls[0]
            plan = self._plans().create(
                method=call.method,
                api=request.api,
                params=call.params,
                risk=assessment.risk,
                read=self._read,
                mask=mask,
                context=context,
                review=request.guards.review,
            )
        record.outcome, record.plan_id = "planned", plan.id
        document = {"plan": plan.summary(), "execute": plan.command(_program())}
        if approval.needs_approval(plan.risk, self._approval_level()):
            document["approval"] = approval.pending(plan, enforced=self._approver is not None)
        return Outcome("document", document=document)

    def _execute_plan(self, request: CallRequest, record: _Record) -> Outcome:
        guards = request.guards
        first = request.calls[0]
        if request.mode != "call" or first.method or first.params or guards.plan_only:
            raise UsageError(
                "a plan runs exactly the stored call: the request gives no method, params or mode",
                code="USAGE",
            )
        store = self._plans()
        record.plan_id = guards.execute_plan
        plan = store.load(guards.execute_plan or "")
        record.method, record.params, record.api = plan.method, plan.params, plan.api
        calls = tuple(Call(method, params, line) for method, params, line in plan.calls())
        assessment = policy.assess((c.method, c.params, c.label if c.line else None) for c in calls)
        record.risk = assessment.risk
        if plan.unlisted:  # made with the operator's consent, which must still stand
            policy.check_widening(["allow-unlisted"], self._settings.allowed_flags)
        # The plan's own choice of packs, inside the operator's ceiling as it is now.
        gates = replace(
            self._gates(guards),
            packs=tuple(plan.packs) or ("none",),
            method_allowlist=tuple(plan.method_allowlist),
            allow_unlisted=plan.unlisted,
        )
        policy.authorize(assessment, gates, "execute")
        # Draining the queue is the named worker's, whoever made the plan (guard/drain.py).
        drain.allowed_drain(
            request.origin,
            (c.method for c in assessment.commands),
            self._settings.broker_drainers,
        )
        level = self._approval_level()
        if guards.approved_plan is not None and guards.approved_plan != plan.digest():
            raise ConflictError(
                f"plan {plan.id} refused: it is not the plan that was approved",
                code="PLAN_CHANGED",
                hint="make a new plan and have it approved again",
            )
        store.check_context(plan, auth_mode=self._settings.auth_mode)
        if guards.approved_plan is None and approval.needs_approval(plan.risk, level):
            if self._approver is None:
                raise approval.unenforceable(level)
            self._approver.wait(store, plan, self._settings.approval_wait_s)
        store.check_fresh(plan, self._read)
        store.claim(plan)
        try:
            outcome = self._run_plan(plan, calls, request, record)
        except B24Error as exc:
            known = self._as_error(exc, record)
            if isinstance(known, _NOT_SENT):
                store.release(plan)
            _raise_as(known, exc)
        outcome.notes.append(f"ran plan {plan.id} (now spent)")
        return outcome

    def _run_plan(
        self, plan: Plan, calls: tuple[Call, ...], request: CallRequest, record: _Record
    ) -> Outcome:
        if plan.lines is None:
            response = self._get_client().call(plan.method, plan.params, api=plan.api)
            return Outcome("response", response=response)
        # A bulk plan runs as its batch file would: idempotent as a whole, a line per call.
        bulk = CallRequest("batch_file", calls, guards=request.guards, params_checked=True)
        return self._batch_file_once(bulk, record)

    def _read_many(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Reads for a bulk plan's previews, 50 a request; a missing record reads as None."""
        results = []
        for outcome in self._get_client().call_many(calls):
            if isinstance(outcome.error, NotFoundError):
                results.append(None)
            elif outcome.error is not None:
                raise outcome.error
            else:
                results.append(outcome.result)
        return results

    # --- idempotent writes ----------------------------------------------------------------------
    def _write_once(
        self, request: CallRequest, record: _Record, method: str, params: Any, send: Send
    ) -> WriteOutcome:
        """Run ``send`` under the request's key (given, or derived from the call itself)."""
        key = self._key(request, record, method, params)
        written = run_write(
            self._idempotency_store(),
            key=key,
            auto=request.guards.idempotency_key is None,
            method=method,
            api=request.api,
            params=params,
            send=send,
            read=self._read,
            mask=self._redactor.mask_obj,
            resolve=request.guards.idempotency_resolve,
        )
        if written.how == "replayed":
            record.outcome = "replayed"
        return written

    @staticmethod
    def _key(request: CallRequest, record: _Record, method: str, params: Any) -> str:
        """The request's idempotency key: the one given, or one derived from the call."""
        given = request.guards.idempotency_key
        key = validate_idempotency_key(given) if given else auto_key(method, request.api, params)
        record.idempotency_key = key
        return key

    def _idempotency_store(self) -> IdempotencyStore:
        settings = self._settings
        return IdempotencyStore(
            open_backend(settings).documents("idempotency", folder=settings.idempotency_dir),
            journals=settings.idempotency_dir,
            ttl_s=settings.idempotency_ttl_s,
            auto_window_s=settings.auto_idempotency_window_s,
            in_flight_s=settings.read_timeout,
        )

    def _call_once(self, request: CallRequest, record: _Record) -> Outcome:
        call = request.calls[0]
        sent: list[CallResult] = []

        def send(params: Mapping[str, Any], header_key: str | None) -> Mapping[str, Any]:
            try:
                sent.append(
                    self._get_client().call(
                        call.method, params, api=request.api, idempotency_key=header_key
                    )
                )
            except Exception as exc:
                # Worded before the key is settled: a store failing after the write left (the
                # limiter's booking) must leave the key unknown, not free it for a resend.
                _raise_as(self._as_error(exc, record), exc)
            return sent[-1].body

        written = self._write_once(request, record, call.method, dict(call.params), send)
        response = sent[-1] if written.how == "sent" else _stored_response(written.body)
        return Outcome("response", response=response, notes=[n for n in [written.note] if n])

    def _batch_file_once(self, request: CallRequest, record: _Record) -> Outcome:
        """A batch file runs at most once under one key, settled line by line after an
        interruption (batchwrite.py). Sending is not streamed here: the outcomes are printed
        once the run is settled; if it stopped early, its error comes after them."""
        calls = request.calls
        lines = [LineCall(c.line or i + 1, c.method, c.params) for i, c in enumerate(calls)]
        key = self._key(request, record, BATCH_FILE, batch_params(calls))

        def send(
            pairs: Iterable[tuple[str, Mapping[str, Any]]], noted: Callable[[], None]
        ) -> Iterator[tuple[int, Any, Any]]:
            outcomes = self._get_client().call_many(
                pairs,
                progress=self._progress,
                parallel=request.parallel,
                params_checked=request.params_checked,
                before_sending=noted,
            )
            return ((o.index, o.result, o.error) for o in outcomes)

        run = run_batch(
            self._idempotency_store(),
            key=key,
            auto=request.guards.idempotency_key is None,
            api=request.api,
            calls=lines,
            send=send,
            read_many=self._read_many,
            mask=self._redactor.mask_obj,
            in_flight_s=self._settings.read_timeout,
            resolve=request.guards.idempotency_resolve,
        )
        if run.how == "replayed":
            record.outcome = "replayed"
        done = [CallOutcome(calls[i], *run.outcomes[i]) for i in sorted(run.outcomes)]
        return Outcome("calls", stream=_then(done, run.stopped), notes=run.notes)

    # --- audit -----------------------------------------------------------------------------------
    def _audited(
        self, stream: Iterator[Any], request: CallRequest, record: _Record
    ) -> Iterator[Any]:
        """``stream`` with the audit line written when it ends, fails or is abandoned."""
        failed: BaseException | None = None
        try:
            for item in stream:
                if isinstance(item, CallOutcome) and item.error is not None:
                    record.outcome = "error"
                yield item
        except BaseException as exc:
            failed = self._as_error(exc, record)
            _raise_as(failed, exc)
        finally:
            try:
                if failed is None:
                    self._audit_success(request, record)
                else:
                    self._audit(request, record, failed)
            except BaseException as exc:
                self._audit_failure(request, record, exc)

    def _as_error(self, exc: BaseException, record: _Record) -> BaseException:
        """``exc`` as the error it means for the caller. Interruptions pass through. Before any
        write left, our errors keep their word and anything else (a bug, an unusable file) is a
        local failure. Once a write left, only the transport's verdict on a request and an
        outcome already unknown keep theirs: anything else (a state store lost, an audit log
        swapped, a bug) struck after the write, which may have run (exit 7)."""
        if not isinstance(exc, Exception):
            return exc  # KeyboardInterrupt, GeneratorExit
        settled = isinstance(exc, B24Error) and (
            exc.verdict or isinstance(exc, (OutcomeUnknownError, Interrupted))
        )
        if not self.wrote:
            return exc if isinstance(exc, B24Error) else local_failure(exc)
        return exc if settled else _unknown_after_write(exc, record)

    def _audit_failure(self, request: CallRequest, record: _Record, exc: BaseException) -> NoReturn:
        """Audit ``exc`` and raise what it means; if it struck once the line was being written
        (a signal held until then, or the log itself failing), it passes on as it is."""
        if record.audit_started:
            raise exc
        known = self._as_error(exc, record)
        self._audit(request, record, known)
        _raise_as(known, exc)

    def _audit_success(self, request: CallRequest, record: _Record) -> None:
        """The audit line of a request that ended well; a log that fails now, after a write
        left, must not say the write was not made (see ``_as_error``)."""
        try:
            self._audit(request, record)
        except B24Error as exc:
            _raise_as(self._as_error(exc, record), exc)

    def _audit(
        self, request: CallRequest, record: _Record, exc: BaseException | None = None
    ) -> None:
        """Append the request's line. A log that cannot be written is an error too, but never
        hides the call's own error."""
        if not request.guards.audit and "no-audit" in self._settings.allowed_flags:
            return
        outcome, code, exit_code = record.outcome, None, 0
        if isinstance(exc, B24Error):
            outcome = "refused" if isinstance(exc, (PolicyError, ConflictError)) else "error"
            code, exit_code = exc.code or type(exc).__name__, exc.exit_code
        elif exc is not None:
            # Interrupted or abandoned (anything else became a B24Error in _as_error): 130,
            # or 143/129 for SIGTERM/SIGHUP (``rest.interrupts``).
            outcome, code, exit_code = "error", type(exc).__name__, interruption_exit_code(exc)
        elif record.outcome == "error":
            code, exit_code = "BATCH_FILE_ERRORS", 1
        settings = self._settings
        log = AuditLog.of(settings, self._redactor, self._audit_key)
        event = AuditEvent(
            request_id=record.request_id,
            portal=settings.portal_key,
            method=record.method,
            risk=record.risk,
            outcome=outcome,  # type: ignore[arg-type]
            duration_ms=(time.monotonic() - record.started) * 1000.0,
            params=record.params,
            api=record.api,
            plan_id=record.plan_id,
            idempotency_key=record.idempotency_key,
            error=code,
            exit_code=exit_code,
            origin=request.origin,
        )
        try:
            _write_when_free(log, event, record)
        except KeyboardInterrupt as interruption:
            if record.audit_started:
                raise  # the line is on disk: the interruption passes on as it is
            record.audit_started = True  # its line is kept: the interruption needs none
            kept = _keep(log, event)
            raise _interrupted_waiting(log, event, kept, interruption) from None
        except OSError as failure:
            reason = failure.strerror or type(failure).__name__
            if not record.audit_started:  # the lock was never free
                record.audit_started = True
                reason = f"{reason}; {_keep(log, event)}"
            if exc is not None and isinstance(exc, B24Error):
                exc.hint = f"{exc.hint} (the audit log {log.path} was not written: {reason})"
                return
            raise ConfigError(
                f"cannot write the audit log {log.path}: {reason}; the call itself ended "
                f"'{outcome}'",
                code="AUDIT_UNWRITABLE",
                hint="fix B24_AUDIT_FILE (or the folder it names) so the log can be written",
            ) from failure


#: How often a writer whose audit log is locked by another process tries again (seconds).
LOCK_POLL_S = 0.05


def _write_when_free(log: AuditLog, event: AuditEvent, record: _Record) -> None:
    """Write ``event``'s line once the log's lock is free (filelock.Timeout after
    LOCK_TIMEOUT_S). Signals are held while the lock is tried and, once it is taken, until the
    line is on disk, but not between tries: an interruption while another process holds the
    lock ends the wait at once (KeyboardInterrupt, the line not written) instead of waiting
    for the holder, however long it is stuck."""
    with _signals_held():
        deferred.settle()  # an earlier line's head, and the lock it holds
    lock = log.lock()
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        with _signals_held():
            with contextlib.suppress(Timeout):
                lock.acquire(blocking=False)
            if lock.is_locked:
                record.audit_started = True
                try:
                    line = log.write_locked(event, anchored=False)
                except BaseException:
                    lock.release()
                    raise
                # The line is on disk: the head may follow once the caller has its answer.
                deferred.later(functools.partial(_anchor_and_release, log, line, lock))
                return
        if time.monotonic() >= deadline:
            raise Timeout(lock.lock_file)
        time.sleep(LOCK_POLL_S)


def _anchor_and_release(log: AuditLog, line: dict[str, Any], lock: FileLock) -> None:
    try:
        log.anchor(line)
    finally:
        lock.release()


def _keep(log: AuditLog, event: AuditEvent) -> str:
    """Keep the line the log's lock kept out (``AuditLog.keep``); what became of it, said."""
    try:
        with _signals_held():
            folder = log.keep(event)
    except OSError as failure:
        return f"its audit line could not be kept either: {failure.strerror or failure}"
    return f"its audit line is kept in {folder} and joins the log at its next write"


def _interrupted_waiting(
    log: AuditLog, event: AuditEvent, kept: str, interruption: KeyboardInterrupt
) -> Interrupted:
    """The error of ``interruption``, come while another process held the audit log."""
    error = Interrupted(
        f"interrupted while waiting for the audit log {log.path}, which another process "
        f"holds locked; the call itself ended '{event.outcome}' (exit {event.exit_code}), and "
        f"{kept}",
        code="INTERRUPTED",
        hint=f"what holds {log.path}.lock (a stuck b24, or its disk) keeps every call waiting; "
        "if a write was in flight it may or may not have run: check before repeating it",
    )
    error.exit_code = interruption_exit_code(interruption)  # type: ignore[misc]
    return error


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold this thread's interrupting signals while an audit line is written, so one that
    comes then (a broker caller's, relayed to this thread, or Ctrl-C: the call's own threads
    block them, ``rest.interrupts``) interrupts after the line is on disk instead of cutting it
    short."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _raise_as(known: BaseException, original: BaseException) -> NoReturn:
    """Raise ``known``, the error ``original`` means (``_as_error``); itself if it is the same."""
    if known is original:
        raise original
    raise known from None


def _unknown_after_write(exc: Exception, record: _Record) -> OutcomeUnknownError:
    """``exc`` struck after a write left: it may have run. Names what settles it: the
    idempotency key (a repeat replays it, or finds a CRM create by its ORIGIN_ID), else the
    plan or the audit line."""
    if record.idempotency_key:
        settle = (
            f"repeat the same call under idempotency key {record.idempotency_key!r} once that "
            "is fixed: a write that ran is replayed or looked up, not sent again; one that "
            "cannot be looked up waits for you to check the portal and resolve the key as "
            "done or failed"
        )
    else:
        named = f"plan {record.plan_id}" if record.plan_id else f"request {record.request_id}"
        settle = f"check the portal before repeating it ({named} in the audit log)"
    if not isinstance(exc, B24Error):
        error = unexpected_after_sending(exc)
        error.hint = f"{error.hint}; {settle}"
        return error
    cause = "" if exc.retryable else f"{exc.hint}; "
    return OutcomeUnknownError(
        f"{record.method} was sent to the portal, then {exc.message}; whether it ran is not known",
        code=exc.code,
        hint=f"{cause}the write may or may not have run: {settle}",
        details={"idempotency_key": record.idempotency_key, "request_id": record.request_id},
    )


def _then(done: list[CallOutcome], error: B24Error | None) -> Iterator[CallOutcome]:
    """The outcomes, then ``error`` if the run stopped early."""
    yield from done
    if error is not None:
        raise error


def verify_audit(settings: Settings, path: str | None) -> dict[str, Any]:
    """Check the audit log's hash chain (``path`` or settings.audit_file) and report on it.

    Returns the JSON report the CLI prints; a broken chain raises AuditChainError (exit 1).
    With ``B24_AUDIT_KEY_FILE`` the chain is verified as keyed (the report's ``keyed``).
    """
    return check(Path(path) if path else Path(settings.audit_file), audit_key(settings)).to_json()
