"""Pace requests so that every process on this machine together stays inside the portal's limits.

The portal counts requests in a leaky bucket (limits.md: +1 per request, drains ``rate``/s,
``QUERY_LIMIT_EXCEEDED`` above ``burst``) and sums each method's handler time over ten minutes
(``OPERATION_TIME_LIMIT`` past the budget). Backing off after a 503 is too late when eight agents
share a portal, so the limiter models the same bucket in a file all processes share.

The model is GCRA, the scheduling form of a leaky bucket: the file holds one number, ``tat``, the
moment our model of the portal's bucket drains empty. A request reserves the earliest moment the
bucket has room (``tat - tolerance``), moves ``tat`` on by one drain interval and sleeps outside
the lock until its moment. One short lock per request (read, add, atomic write) and no polling,
so N processes interleave fairly and the lock is never held while sleeping.

Safety margins, because the portal's counter is not ours: the drain rate is modelled 2% slower
and the capacity ``ceil(rate) + 1`` smaller (the docs describe the counter dropping once a second,
so it can sit up to ``rate`` above a continuous model, plus one for network jitter; capped at half
the capacity for unusual custom plans). A 503 that
still arrives means someone else uses the portal too: the local bucket is set to full.

Per-method time: responses carry ``time.operating`` (seconds this method used in the window) and
``operating_reset_at``; past 90% of the budget a call waits for the oldest minute to leave the
window instead of being refused, and waits longer than ``max_operating_wait_s`` fail fast with
OperationTimeLimitError. Entries are written only once a method has used a quarter of its budget,
so ordinary calls do not pay for the bookkeeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from filelock import Timeout as LockTimeout

from .. import state
from ..errors import ConfigError, CorruptStateError, OperationTimeLimitError, TransientError
from ..settings import Settings
from .schemas import load_schema

__all__ = ["BucketModel", "HoldBudget", "Limiter", "RateLimiter", "make_limiter"]

T = TypeVar("T")

RATE_MARGIN = 0.98
#: Operating budget the portal enforces per method and credential (limits.md: 420 s on-premise
#: when enabled, up to 480 s in the cloud; the lower one is the safe assumption).
OPERATING_BUDGET_S = 420.0
OPERATING_SOFT_SHARE = 0.9
OPERATING_RECORD_SHARE = 0.25
#: A reservation further ahead than this means the wall clock jumped back; do not trust it.
MAX_BACKLOG_S = 600.0
#: When the portal blocks a method without saying until when, assume one basket (a minute).
UNKNOWN_RESET_S = 60.0
LOCK_POLL_S = 0.002
LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BucketModel:
    """The portal's bucket with our margins, as GCRA parameters (seconds)."""

    interval: float  # one request's worth of drain
    tolerance: float  # how far ahead of the drain a request may be sent (burst - 1 intervals)

    @classmethod
    def for_plan(cls, rate: float, burst: int) -> BucketModel:
        safe_rate = rate * RATE_MARGIN
        margin = min(math.ceil(rate) + 1, burst // 2)  # never more than half the capacity
        safe_burst = max(1, burst - margin)
        interval = 1.0 / safe_rate
        return cls(interval, (safe_burst - 1) * interval)

    def reserve(self, tat: float, earliest: float) -> tuple[float, float]:
        """(moment to send, new tat) for a request that may go at ``earliest`` at the soonest."""
        tat = min(max(tat, earliest), earliest + self.tolerance + MAX_BACKLOG_S)
        return max(earliest, tat - self.tolerance), tat + self.interval

    def full(self, now: float) -> float:
        """The tat of a full bucket: the next request waits one interval."""
        return now + self.tolerance + self.interval


@dataclass
class HoldBudget:
    """How long one logical call may still be held for its method's time budget, across all of
    its attempts: ``B24_MAX_OPERATING_WAIT_SEC`` is a total. Without it, a method refused with
    OPERATION_TIME_LIMIT and no ``operating_reset_at`` was held a full minute before each of
    its retries (241 s under a 60 s setting)."""

    left: float


class _Store(Protocol):
    def update(self, change: Callable[[dict[str, Any]], T]) -> T: ...


class _MemoryStore:
    """State for one process (``B24_RATE_LIMITER=memory``): threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        with self._lock:
            return change(self._data)


class _FileStore:
    """State shared by every process through one small JSON file (state.py does the writing)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._schema = load_schema("limiter-state")
        self._lock = state.file_lock(path, timeout=LOCK_TIMEOUT_S)
        #: Threads of this process queue here, woken in turn, instead of each polling the
        #: file lock every 2 ms (20 threads of a parallel batch spent 0.16 s doing that).
        self._threads = threading.Lock()

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        if not self._threads.acquire(timeout=LOCK_TIMEOUT_S):
            raise self._busy()
        try:
            with self._lock.acquire(poll_interval=LOCK_POLL_S):
                data = state.read_json(self._path, default={}, schema=self._schema)
                result = change(data)
                # Not fsynced: the model is shared through the page cache, and after a power
                # cut its moments lie in the past anyway. Two fsyncs were a fifth of a call.
                state.write_json_atomic(self._path, data, mode=0o600, durable=False)
        except CorruptStateError as exc:
            raise exc.with_hint("the limiter starts afresh on the next call") from None
        except LockTimeout:
            raise self._busy() from None
        except OSError as exc:
            raise ConfigError(
                f"cannot use the rate limiter file {self._path}: {exc.strerror or exc}",
                code="CONFIG_INVALID",
                hint="check B24_RATE_LIMITER_FILE / B24_STATE_DIR, or set B24_RATE_LIMITER=memory",
            ) from None
        finally:
            self._threads.release()
        return result

    def _busy(self) -> TransientError:
        return TransientError(
            f"the rate limiter file {self._path} stayed locked too long",
            code="LIMITER_BUSY",
            hint="a process holding it may be stuck; retry",
        )


class Limiter(Protocol):
    """What the client calls around every HTTP request."""

    def acquire(self, key: str | None = None, budget: HoldBudget | None = None) -> float: ...
    def rejected(self) -> None: ...
    def record(self, key: str, timing: Any) -> None: ...
    def blocked(self, key: str, reset_at: float | None) -> None: ...


class NoLimiter:
    """``B24_RATE_LIMITER=off``: trust the portal's 503s and the retry policy alone."""

    def acquire(self, key: str | None = None, budget: HoldBudget | None = None) -> float:
        return 0.0

    def rejected(self) -> None:
        pass

    def record(self, key: str, timing: Any) -> None:
        pass

    def blocked(self, key: str, reset_at: float | None) -> None:
        pass


class RateLimiter:
    """The shared bucket plus per-method operating time (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: _Store,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = BucketModel.for_plan(settings.rate, settings.burst)
        self._store = store
        self._sleep = sleep
        self._clock = clock
        self._max_operating_wait = settings.max_operating_wait_s
        self._watched: set[str] = set()

    def acquire(self, key: str | None = None, budget: HoldBudget | None = None) -> float:
        """Wait for ``key``'s time budget, then for a request slot; return seconds waited.

        A held method sleeps without reserving a slot, so it never delays other methods or
        other processes; the slot is reserved only once the method may go. ``budget``: what is
        left of the call's total hold allowance (``max_operating_wait_s`` when not given);
        holds are taken from it, and a hold longer than what is left fails at once.
        """
        budget = budget or HoldBudget(self._max_operating_wait)
        waited = 0.0
        while True:
            hold, wait = self._store.update(
                partial(self._reserve, key=key, now=self._clock(), cap=budget.left)
            )
            pause = hold or wait
            if pause > 0:
                self._sleep(pause)
                waited += pause
            if not hold:
                return waited
            budget.left -= hold

    def _reserve(
        self, data: dict[str, Any], *, key: str | None, now: float, cap: float
    ) -> tuple[float, float]:
        """Under the store's lock: (seconds the method is held, or 0 and seconds to the slot)."""
        methods = data.setdefault("methods", {})
        self._prune(methods, now)
        self._watched = set(methods)
        hold = self._operating_wait(key, methods.get(key or ""), now, cap)
        if hold > 0:
            return hold, 0.0
        send_at, data["tat"] = self.model.reserve(float(data.get("tat", 0.0)), now)
        return 0.0, send_at - now

    @staticmethod
    def _operating_wait(
        key: str | None, entry: Mapping[str, float] | None, now: float, cap: float
    ) -> float:
        if key is None or entry is None:
            return 0.0
        if (
            entry["operating"] < OPERATING_BUDGET_S * OPERATING_SOFT_SHARE
            or entry["reset_at"] <= now
        ):
            return 0.0
        wait = entry["reset_at"] - now
        if wait > cap:
            method = key.rsplit("|", 1)[-1]
            raise OperationTimeLimitError(
                f"{method} has used {entry['operating']:.0f} s of its 10-minute time budget; "
                f"it frees up at {time.strftime('%H:%M:%S', time.localtime(entry['reset_at']))}",
                code="OPERATION_TIME_LIMIT",
                hint="retry after that time, or lighten the calls (smaller pages, fewer fields)",
                details={"operating_reset_at": int(entry["reset_at"])},
            )
        return wait

    @staticmethod
    def _prune(methods: dict[str, Any], now: float) -> None:
        for name in [k for k, v in methods.items() if v["reset_at"] + 600 < now]:
            del methods[name]

    def rejected(self) -> None:
        """The portal answered QUERY_LIMIT_EXCEEDED: someone else shares it; fill the bucket."""
        now = self._clock()

        def fill(data: dict[str, Any]) -> None:
            data["tat"] = max(float(data.get("tat", 0.0)), self.model.full(now))

        self._store.update(fill)

    def record(self, key: str, timing: Any) -> None:
        """Book a response's ``time.operating`` / ``operating_reset_at`` under ``key``."""
        if not isinstance(timing, Mapping):
            return
        operating, reset_at = timing.get("operating"), timing.get("operating_reset_at")
        if not isinstance(operating, (int, float)) or not isinstance(reset_at, (int, float)):
            return
        if operating < OPERATING_BUDGET_S * OPERATING_RECORD_SHARE and key not in self._watched:
            return
        self._set(key, float(operating), float(reset_at))

    def blocked(self, key: str, reset_at: float | None) -> None:
        """The portal refused ``key`` with OPERATION_TIME_LIMIT: hold it until ``reset_at``."""
        self._set(key, OPERATING_BUDGET_S, reset_at)

    def _set(self, key: str, operating: float, reset_at: float | None) -> None:
        now = self._clock()

        def change(data: dict[str, Any]) -> None:
            methods = data.setdefault("methods", {})
            known = methods.get(key, {}).get("reset_at", 0.0)
            until = reset_at or (known if known > now else now + UNKNOWN_RESET_S)
            methods[key] = {"operating": operating, "reset_at": until}
            self._watched = set(methods)

        self._store.update(change)


def make_limiter(settings: Settings) -> Limiter:
    """The limiter ``settings.rate_limiter`` asks for: file (shared), memory, or off."""
    if settings.rate_limiter == "off":
        return NoLimiter()
    if settings.rate_limiter == "memory":
        return RateLimiter(settings, _MemoryStore())
    return RateLimiter(settings, _FileStore(settings.rate_limiter_file))
