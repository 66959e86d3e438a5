"""The guarded call path: every CLI call passes here, through the same stages in the same order.

Why one place: the guard rails (confirmations, packs, plans, idempotency, audit) are only worth
anything if no path around them exists. The CLI builds a ``CallRequest``, this module decides,
calls the client and hands back an ``Outcome`` for the CLI to print. Stages of ``Pipeline.run``:

1. assess       the risk of every call; a ``batch`` is judged command by command; unknown = write
2. policy       packs / method allowlist, confirmation gates by risk, require-plan
3. plan         ``--plan-only`` stores the request; ``--execute-plan ID`` loads and spends it
4. idempotency  reserve the key before a write, settle it after (replay or conflict)
5. dispatch     client.call, client.iter_all (export) or client.call_many (batch file)
6. audit        one tamper-evident record per request

Stages 2 (packs/allowlist), 3, 4 and 6 belong to policy.py, plans.py, idempotency.py and
audit.py; until they are wired in, this module enforces the confirmation gates and refuses the
flags that need them, so nothing that was asked to be guarded runs unguarded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import catalog
from .encoding import parse_batch_command, php_map
from .errors import B24Error, PolicyError, UsageError
from .redact import Redactor

if TYPE_CHECKING:
    from .client import Bitrix24Client, CallResult
    from .settings import Settings

__all__ = [
    "Call",
    "CallOutcome",
    "CallRequest",
    "Guards",
    "Outcome",
    "Pipeline",
    "Target",
    "assess",
    "verify_audit",
]

Risk = Literal["read", "write", "destructive"]
Mode = Literal["call", "export", "batch_file"]


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


@dataclass(frozen=True)
class CallRequest:
    """What the CLI asks for: one call, a full export of one list call, or a batch file."""

    mode: Mode
    calls: tuple[Call, ...]
    api: str = "v2"
    limit: int | None = None
    guards: Guards = field(default_factory=Guards)


@dataclass(frozen=True)
class Target:
    """One method a request would run, with its risk: a call, or one command inside a batch."""

    call: Call
    label: str
    method: str
    risk: Risk


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


def _batch_commands(params: Mapping[str, Any]) -> Iterator[tuple[str, str | None]]:
    """``(name, method)`` per command of a v2 batch; method None when it cannot be read."""
    try:
        commands = php_map(params.get("cmd"))
    except TypeError:
        commands = {}
    if not commands:
        yield "cmd", None
    for name, command in commands.items():
        yield name, parse_batch_command(command)[0] if isinstance(command, str) else None


def assess(call: Call) -> list[Target]:
    """The methods ``call`` would run and their risks; unreadable batch commands count as writes."""
    if call.method.strip().lower().removesuffix(".json") != "batch":
        return [Target(call, call.label, call.method, catalog.risk_of(call.method))]
    return [
        Target(
            call,
            f"{call.label} command '{name}' ({method or 'unreadable'})",
            method or "batch",
            catalog.risk_of(method) if method else "write",
        )
        for name, method in _batch_commands(call.params)
    ]


def _check_confirmation(target: Target, guards: Guards) -> None:
    """Writes need --confirm-write, destructive calls --confirm-destructive (nothing prompts)."""
    if target.risk == "write" and not guards.confirm_write:
        flag, what = "--confirm-write", "changes data"
    elif target.risk == "destructive" and not guards.confirm_destructive:
        flag, what = "--confirm-destructive", "deletes or stops something"
    else:
        return
    raise PolicyError(
        f"{target.label} {what} ({target.risk}); add {flag} to run it",
        code="CONFIRMATION_REQUIRED",
        hint=f"check the params, then repeat the command with {flag}",
    )


def _not_available(flag: str) -> UsageError:
    return UsageError(f"{flag} is not available in this build", code="NOT_AVAILABLE")


def _check_plan(targets: list[Target], guards: Guards, settings: Settings) -> None:
    """Refuse plan flags until plans.py is wired in; enforce require-plan for writes already."""
    if guards.plan_only or guards.execute_plan:
        raise _not_available("--plan-only" if guards.plan_only else "--execute-plan")
    risky = [t for t in targets if t.risk != "read"]
    if settings.require_plan and risky:
        raise PolicyError(
            f"{risky[0].label} is a {risky[0].risk} and a plan is required (B24_REQUIRE_PLAN)",
            code="PLAN_REQUIRED",
            hint="run with --plan-only, then with --execute-plan ID",
        )


class Pipeline:
    """Runs requests for one portal; owns the client, so use it as a context manager."""

    def __init__(
        self, settings: Settings, *, progress: Callable[[int], None] | None = None
    ) -> None:
        self._settings = settings
        self._progress = progress
        self._client: Bitrix24Client | None = None
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
            self._client.close()
            self._client = None

    def _get_client(self) -> Bitrix24Client:
        if self._client is None:
            from .client import Bitrix24Client  # requests is imported only when calling

            self._client = Bitrix24Client(self._settings)
            self._redactor = self._client.redactor
        return self._client

    def run(self, request: CallRequest) -> Outcome:
        """Check every guard for every call first, then dispatch; nothing is sent on refusal."""
        targets = [target for call in request.calls for target in assess(call)]
        _check_plan(targets, request.guards, self._settings)
        if request.guards.idempotency_resolve:
            raise _not_available("--idempotency-resolve")  # idempotency.py's stage
        for target in targets:
            _check_confirmation(target, request.guards)
        return self._dispatch(request)

    def _dispatch(self, request: CallRequest) -> Outcome:
        client = self._get_client()
        first = request.calls[0]
        if request.mode == "call":
            key = request.guards.idempotency_key if request.guards.idempotency else None
            response = client.call(first.method, first.params, api=request.api, idempotency_key=key)
            return Outcome("response", response=response)
        if request.mode == "export":
            rows = client.iter_all(
                first.method, first.params, limit=request.limit, progress=self._progress
            )
            return Outcome("items", stream=rows)
        outcomes = client.call_many(
            ((call.method, call.params) for call in request.calls), progress=self._progress
        )
        calls = request.calls
        stream = (CallOutcome(calls[o.index], o.result, o.error) for o in outcomes)
        return Outcome("calls", stream=stream)


def verify_audit(settings: Settings, path: str | None) -> dict[str, Any]:
    """Check the audit log's hash chain (``path`` or settings.audit_file) and report on it.

    Returns the JSON report the CLI prints; a broken chain raises the B24Error to exit with.
    """
    raise _not_available("--verify-audit")  # audit.py's stage
