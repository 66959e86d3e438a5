"""Pace requests so that every process on this machine together stays inside the portal's limits.

The portal counts requests in a leaky bucket (limits.md: +1 per request, drains ``rate``/s,
``QUERY_LIMIT_EXCEEDED`` above ``burst``) and sums each method's handler time over ten minutes
(``OPERATION_TIME_LIMIT`` past the budget). Backing off after a 503 is too late when eight agents
share a portal, so the limiter models the same bucket in state all processes share: a file on
one machine, Redis for a fleet (the state backend; backends/bucket.py holds the model).

The model is GCRA, the scheduling form of a leaky bucket: the state holds one number, ``tat``,
the moment our model of the portal's bucket drains empty (on the machine's own clock, which
nobody steps; on Redis, Redis's clock). A request reserves the earliest moment the bucket has
room (``tat - tolerance``), moves ``tat`` on by one drain interval and sleeps outside the lock
until its moment. One short atomic step per request (a file lock, or one Lua script) and no
polling, so N processes interleave fairly and nothing is held while sleeping.

Safety margin, because the portal's counter is not ours: the capacity is modelled ``ceil(rate) +
1`` smaller (the docs describe the counter dropping once a second, so it can sit up to ``rate``
above a continuous model, plus one for network jitter; capped at half the capacity for unusual
custom plans). Those are errors of phase, which this margin absorbs however long a job runs. The
drain rate is the plan's own (limits.md: exactly ``Y`` per second): modelling it 2% slower, as
we once did, guarded against no documented behaviour and made every job past the bucket 2%
slower than the portal allows (1.5 s of a 75 s one). A 503 that still arrives means someone
else uses the portal too: the local bucket is set to full.

Per-method time: responses carry ``time.operating`` (seconds this method used in the window) and
``operating_reset_at``; past 90% of the budget a call waits for the oldest minute to leave the
window instead of being refused, and waits longer than ``max_operating_wait_s`` fail fast with
OperationTimeLimitError. Entries are written only once a method has used a quarter of its budget,
so ordinary calls do not pay for the bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..backends import open_backend
from ..backends.base import BucketState
from ..backends.bucket import (
    OPERATING_BUDGET_S,
    BucketModel,
    Clock,
    DictBucket,
    MemoryStore,
    machine_clock,
)
from ..errors import OperationTimeLimitError
from ..settings import Settings
from .schemas import load_schema

__all__ = ["BucketModel", "HoldBudget", "Limiter", "RateLimiter", "make_limiter", "memory_bucket"]

OPERATING_RECORD_SHARE = 0.25


@dataclass
class HoldBudget:
    """How long one logical call may still be held for its method's time budget, across all of
    its attempts: ``B24_MAX_OPERATING_WAIT_SEC`` is a total. Without it, a method refused with
    OPERATION_TIME_LIMIT and no ``operating_reset_at`` was held a full minute before each of
    its retries (241 s under a 60 s setting)."""

    left: float


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
        bucket: BucketState,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = BucketModel.for_plan(settings.rate, settings.burst)
        self._bucket = bucket
        self._sleep = sleep
        self._clock = clock
        self._max_operating_wait = settings.max_operating_wait_s
        self._watched: frozenset[str] = frozenset()

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
            now = self._clock()
            slot = self._bucket.reserve(key, now)
            self._watched = slot.watched
            hold = _operating_wait(key, slot.held, now, budget.left) if slot.held else 0.0
            pause = hold or slot.wait
            if pause > 0:
                self._sleep(pause)
                waited += pause
            if not slot.held:
                return waited
            budget.left -= hold

    def rejected(self) -> None:
        """The portal answered QUERY_LIMIT_EXCEEDED: someone else shares it; fill the bucket."""
        self._bucket.fill(self._clock())

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
        self._bucket.book(key, operating, reset_at, self._clock())
        self._watched = self._watched | {key}


def _operating_wait(key: str | None, held: tuple[float, float], now: float, cap: float) -> float:
    """Seconds a held method waits for its budget; OperationTimeLimitError past ``cap``."""
    operating, reset_at = held
    wait = reset_at - now
    if wait > cap:
        method = (key or "").rsplit("|", 1)[-1]
        raise OperationTimeLimitError(
            f"{method} has used {operating:.0f} s of its 10-minute time budget; "
            f"it frees up at {time.strftime('%H:%M:%S', time.localtime(reset_at))}",
            code="OPERATION_TIME_LIMIT",
            hint="retry after that time, or lighten the calls (smaller pages, fewer fields)",
            details={"operating_reset_at": int(reset_at)},
        )
    return wait


def memory_bucket(settings: Settings, clock: Clock = machine_clock) -> DictBucket:
    """State for one process (``B24_RATE_LIMITER=memory``): threads share it. ``clock``: the
    bucket's moments (bucket.machine_clock; a test passes its own)."""
    return DictBucket(MemoryStore(), BucketModel.for_plan(settings.rate, settings.burst), clock)


def make_limiter(settings: Settings) -> Limiter:
    """The limiter ``settings.rate_limiter`` asks for: shared (in the state backend: a file on
    this machine, or Redis for a fleet), memory, or off."""
    if settings.rate_limiter == "off":
        return NoLimiter()
    if settings.rate_limiter == "memory":
        return RateLimiter(settings, memory_bucket(settings))
    model = BucketModel.for_plan(settings.rate, settings.burst)
    bucket = open_backend(settings).bucket(
        interval=model.interval,
        tolerance=model.tolerance,
        path=settings.rate_limiter_file,
        schema=load_schema("limiter-state"),
    )
    return RateLimiter(settings, bucket)
