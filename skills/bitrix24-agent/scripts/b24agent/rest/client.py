"""Bitrix24Client: one call, a batch, many calls, or a full export, done safely.

Every HTTP request takes the same path: validate params (schemas/), take a slot from the shared
limiter, attach the current credential, send (transport.py), book the method's operating time,
and let the retry policy (retrying.py) decide about resending or refreshing the token. Errors
leave through one exit that masks every secret we know, including tokens rotated at run time.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import requests

from ..catalog import risk_of
from ..errors import (
    AuthError,
    B24Error,
    ConfigError,
    OperationTimeLimitError,
    PolicyError,
    RateLimitError,
    UsageError,
)
from ..redact import Redactor
from ..settings import Settings
from . import export
from .auth import Credential, make_auth
from .batching import (
    MAX_COMMANDS,
    Commands,
    check_command,
    check_method_name,
    command_methods,
    halted_error,
    parse_batch,
    plan_batch,
)
from .idempotency_key import validate_idempotency_key
from .inflight import InFlight
from .limiter import HoldBudget, make_limiter
from .results import BatchResult, CallResult, ItemOutcome
from .retrying import RetryPolicy
from .schemas import validate_params
from .transport import Envelope, Transport, Watcher

__all__ = ["BatchResult", "Bitrix24Client", "CallResult", "ItemOutcome", "default_is_write"]

#: Failures of a whole chunk that no later chunk can escape: stop instead of reporting each item.
_SYSTEMIC = (AuthError, ConfigError, UsageError, PolicyError)


def default_is_write(method: str) -> bool:
    """Fail closed: anything the catalog does not know to be a read is a write."""
    return risk_of(method) != "read"


_Chunk = list[tuple[int, tuple[str, Mapping[str, Any]]]]


def _chunks(
    calls: Iterable[tuple[str, Mapping[str, Any]]], before_sending: Callable[[], None] | None
) -> Iterator[_Chunk]:
    """Numbered calls in chunks of MAX_COMMANDS, read lazily; ``before_sending`` runs once a
    chunk is read whole, before it is handed on to be sent."""
    numbered = enumerate(calls)
    while chunk := list(itertools.islice(numbered, MAX_COMMANDS)):
        if before_sending is not None:
            before_sending()
        yield chunk


class Bitrix24Client:
    """A guarded Bitrix24 REST client for one portal (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        is_write: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        #: Masks configured secrets and every token the client learns later; use it for output.
        self.redactor = Redactor(settings.secrets())
        self._transport = Transport(settings, session)
        self._owns_session = session is None
        self._auth = make_auth(settings, self._transport.session, self.redactor.add)
        self._limiter = make_limiter(settings)
        self._policy = RetryPolicy(settings)
        self._is_write = is_write or default_is_write
        #: ``time.operating_reset_at`` of each method's last success: a 429 OPERATION_TIME_LIMIT
        #: carries no reset time (limits.md), which says to take it from there.
        self._reset_at: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def requests_sent(self) -> int:
        """HTTP requests that reached the wire (portal only, token server excluded)."""
        return self._transport.requests_sent

    @property
    def writes_out(self) -> int:
        """Write requests that left and were not refused: each may have run (transport.py)."""
        return self._transport.writes_out

    def close(self) -> None:
        if self._owns_session:
            self._transport.session.close()

    def __enter__(self) -> Bitrix24Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _mask(self, error: B24Error) -> B24Error:
        error.message = self.redactor.mask(error.message)
        error.hint = self.redactor.mask(error.hint)
        error.args = (error.message,)
        return error

    @contextlib.contextmanager
    def _masked(self) -> Iterator[None]:
        """The single exit for errors: mask secrets in message and hint before they leave."""
        try:
            yield
        except B24Error as exc:
            self._mask(exc)
            raise

    # -- one call ----------------------------------------------------------------------------

    def is_write(self, method: str, params: Mapping[str, Any] | None = None) -> bool:
        """Whether ``method`` changes data; a batch is a write if any of its commands is."""
        if method.lower() == "batch":
            methods = command_methods((params or {}).get("cmd"))
            return not methods or any(self._is_write(m) for m in methods.values())
        return self._is_write(method)

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        api: str = "v2",
        idempotency_key: str | None = None,
        write: bool | None = None,
    ) -> CallResult:
        """Call one method and return its result, or raise the B24Error it failed with."""
        return self._call(method, params, api, idempotency_key, write)

    def _call(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        api: str,
        idempotency_key: str | None,
        write: bool | None,
        watcher: Watcher | None = None,
    ) -> CallResult:
        with self._masked():
            method = check_method_name(method)
            if api not in ("v2", "v3"):
                raise UsageError(f"api must be v2 or v3, not {api!r}", code="INVALID_API")
            params = dict(params or {})
            validate_params(method, params, api=api)
            if idempotency_key is not None:
                validate_idempotency_key(idempotency_key)
            if write is None:
                write = self.is_write(method, params)
            envelope = self._send(method, params, api, write, idempotency_key, watcher)
            self._book(method, params, envelope)
            body = envelope.body
            return CallResult(
                result=body.get("result"),
                total=body.get("total"),
                next=body.get("next"),
                time=envelope.time,
                body=body,
                http_status=envelope.http_status,
                replayed=envelope.replayed,
            )

    def _key(self, method: str) -> str:
        return f"{self._auth.identity}|{method.lower()}"

    def _send(
        self,
        method: str,
        params: dict[str, Any],
        api: str,
        write: bool,
        idempotency_key: str | None,
        watcher: Watcher | None,
    ) -> Envelope:
        key = None if method.lower() == "batch" else self._key(method)
        used: list[Credential] = []
        budget = HoldBudget(self.settings.max_operating_wait_s)  # for all attempts together

        def attempt() -> Envelope:
            self._limiter.acquire(key, budget)
            credential = self._auth.credential()
            used.append(credential)
            try:
                return self._transport.send(
                    method,
                    params,
                    credential,
                    api=api,
                    write=write,
                    idempotency_key=idempotency_key,
                    watcher=watcher,
                )
            except RateLimitError:
                self._limiter.rejected()
                raise
            except OperationTimeLimitError as exc:
                if key is not None:
                    reset_at = exc.details.get("operating_reset_at") or self._reset_at.get(key)
                    if reset_at is not None:
                        exc.details["operating_reset_at"] = int(reset_at)
                    self._limiter.blocked(key, reset_at)
                raise

        return self._policy.run(attempt, lambda: self._auth.refresh(used[-1]))

    def _book(self, method: str, params: Mapping[str, Any], envelope: Envelope) -> None:
        """Record operating time: a batch's commands under their own methods (the batch itself
        is not counted by the portal)."""
        if method.lower() != "batch":
            key = self._key(method)
            self._limiter.record(key, envelope.time)
            reset_at = envelope.time.get("operating_reset_at")
            if isinstance(reset_at, (int, float)):
                self._reset_at[key] = float(reset_at)
            return
        result = envelope.body.get("result")
        times = result.get("result_time") if isinstance(result, Mapping) else None
        if not isinstance(times, Mapping):
            return
        methods = command_methods(params.get("cmd"))
        for name, timing in times.items():
            if str(name) in methods:
                self._limiter.record(self._key(methods[str(name)]), timing)

    # -- batches -----------------------------------------------------------------------------

    def batch(
        self,
        commands: Commands,
        *,
        halt: bool = False,
        params_checked: bool = False,
        watcher: Watcher | None = None,
    ) -> BatchResult:
        """Run up to 50 commands in one request; per-command errors are classified, not raised.
        ``params_checked``: the caller built or validated every command's params itself (the
        offline worker's 1,000-id clears took 85 ms each to re-check). ``watcher`` sees the
        exchange as it happens (transport.Watcher): the export sends its next batch early."""
        return self._batch(commands, halt=halt, params_checked=params_checked, watcher=watcher)

    def _batch(
        self,
        commands: Commands,
        *,
        halt: bool,
        params_checked: bool,
        watcher: Watcher | None = None,
    ) -> BatchResult:
        with self._masked():
            plan = plan_batch(commands, params_checked=params_checked)
            write = any(self._is_write(m) for m in plan.methods.values())
            batch = {"halt": 1 if halt else 0, "cmd": plan.cmd}
            call = self._call("batch", batch, "v2", None, write, watcher)
            answer = parse_batch(call, plan, halt=halt, is_write=self._is_write)
            for error in answer.errors.values():
                self._mask(error)  # per-command descriptions come from the portal too
            return answer

    def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any]]],
        *,
        halt: bool = False,
        progress: Callable[[int], None] | None = None,
        parallel: int = 1,
        params_checked: bool = False,
        before_sending: Callable[[], None] | None = None,
    ) -> Iterator[ItemOutcome]:
        """Any number of calls, sent as batches of 50, outcomes yielded in input order.

        A chunk whose request fails as a whole gives every item in it that error (a write chunk
        that timed out is OutcomeUnknownError for each); auth, config and usage failures stop the
        run. With ``halt`` the run stops after the first chunk holding a failure.

        ``parallel`` > 1 sends that many batches at once (the rate limiter still paces them):
        only for calls that do not depend on each other's order, because batch 2 may then land
        before batch 1. Ignored with ``halt``, which needs each batch's outcome before the next.

        ``params_checked``: every params was already validated (``schemas.validate_params``),
        so it is not checked again: 1,000 commands cost 80 ms of schema checks.

        ``before_sending`` is called once per batch, after its calls were pulled from ``calls``
        and before the request leaves: a caller that notes each call as it hands it over makes
        the batch's notes durable there, with one fsync for the batch (batchwrite.py).
        """
        if parallel < 1:
            raise UsageError(f"parallel must be at least 1, not {parallel}", code="USAGE")
        width = 1 if halt else parallel
        done = 0
        run_chunk = functools.partial(self._run_chunk, halt=halt, params_checked=params_checked)
        for outcomes in self._chunk_outcomes(_chunks(calls, before_sending), run_chunk, width):
            yield from outcomes
            done += len(outcomes)
            if progress is not None:
                progress(done)
            if halt and any(not o.ok for o in outcomes):
                return

    @staticmethod
    def _chunk_outcomes(
        chunks: Iterator[_Chunk], run_chunk: Callable[[_Chunk], list[ItemOutcome]], width: int
    ) -> Iterator[list[ItemOutcome]]:
        """Each chunk's outcomes, in input order. With ``width`` > 1 a sliding window: a new
        batch goes out as soon as the oldest returns, so no batch waits for a whole wave (50 ms
        of latency saved per wave on a cloud portal)."""
        if width == 1:
            for chunk in chunks:
                yield run_chunk(chunk)
            return
        window: collections.deque[InFlight[list[ItemOutcome]]] = collections.deque()
        for chunk in chunks:
            window.append(InFlight(functools.partial(run_chunk, chunk)))
            if len(window) == width:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _run_chunk(self, chunk: _Chunk, *, halt: bool, params_checked: bool) -> list[ItemOutcome]:
        """One batch for the valid items of ``chunk``; invalid ones fail alone (and, with
        ``halt``, nothing after the first invalid one is sent)."""
        errors: dict[int, B24Error] = {}
        to_send: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for index, (method, params) in chunk:
            if halt and errors:
                errors[index] = halted_error()
                continue
            try:
                name = check_command(method, params, params_checked=params_checked)
                to_send[str(index)] = (name, params)
            except UsageError as exc:
                errors[index] = exc
        results: dict[str, Any] = {}
        if to_send:
            try:
                # Every command here was just checked (or vouched for): not again.
                answer = self._batch(to_send, halt=halt, params_checked=True)
            except _SYSTEMIC:
                raise
            except B24Error as exc:
                answer = BatchResult({}, {name: exc for name in to_send}, {}, {}, {})
            results = answer.results
            errors.update({int(name): error for name, error in answer.errors.items()})
        return [
            ItemOutcome(index, method, results.get(str(index)), errors.get(index))
            for index, (method, _) in chunk
        ]

    # -- export ------------------------------------------------------------------------------

    def iter_all(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Any]:
        """Every row of a list method (fast id-chained export where possible); see export.py."""
        method = check_method_name(method)
        rows = export.iter_all(
            self, method, params, limit=limit, progress=progress, again=self._policy.again
        )
        # One guard around the whole run, not a context manager per row (a tenth of a
        # 100,000-row export's own CPU): the caller's errors are not ours, so none are thrown in.
        with self._masked():
            yield from rows
