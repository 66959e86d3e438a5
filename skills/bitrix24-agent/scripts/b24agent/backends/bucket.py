"""The limiter's model and its state in a dict: one process (memory) or one machine (a file).

The model is GCRA, the scheduling form of a leaky bucket: the state holds one number, ``tat``,
the moment our model of the portal's bucket drains empty. A request reserves the earliest moment
the bucket has room (``tat - tolerance``), moves ``tat`` on by one drain interval and sleeps
outside the lock until its moment. Per-method entries (``methods``) hold the operating time the
portal last reported and when it resets. The Redis backend runs the same steps as Lua scripts
(redis_scripts.py); both must keep the semantics written here.

``tat`` is kept on the machine's own clock (``machine_clock``), not the wall clock: the wall
clock is set and stepped (by NTP, a hypervisor, an operator), and the model only ever needs
seconds elapsed. A step forward made the bucket look drained and let the next requests out at
once, into the portal's 503; a step back held every process for as long as the step. The
methods' ``reset_at`` stays wall-clock time: the portal states it that way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from filelock import Timeout as LockTimeout

from .. import state
from ..errors import ConfigError, CorruptStateError, TransientError
from .base import Slot

__all__ = [
    "MAX_BACKLOG_S",
    "OPERATING_BUDGET_S",
    "OPERATING_SOFT_SHARE",
    "UNKNOWN_RESET_S",
    "BucketModel",
    "Clock",
    "DictBucket",
    "FileStore",
    "MemoryStore",
    "machine_clock",
]

T = TypeVar("T")

#: Operating budget the portal enforces per method and credential (limits.md: 420 s on-premise
#: when enabled, up to 480 s in the cloud; the lower one is the safe assumption).
OPERATING_BUDGET_S = 420.0
OPERATING_SOFT_SHARE = 0.9
#: A reservation further ahead than this means a wall clock (Redis's, or ours where there is
#: no machine clock) jumped back; do not trust it.
MAX_BACKLOG_S = 600.0
#: When the portal blocks a method without saying until when, assume one basket (a minute).
UNKNOWN_RESET_S = 60.0
#: Method entries are forgotten this long after their reset.
FORGET_AFTER_S = 600.0
LOCK_POLL_S = 0.002
LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BucketModel:
    """The portal's bucket with our margins, as GCRA parameters (seconds)."""

    interval: float  # one request's worth of drain
    tolerance: float  # how far ahead of the drain a request may be sent (burst - 1 intervals)

    @classmethod
    def for_plan(cls, rate: float, burst: int) -> BucketModel:
        """The plan's own drain rate, and ``ceil(rate) + 1`` less capacity (see limiter.py)."""
        margin = min(math.ceil(rate) + 1, burst // 2)  # never more than half the capacity
        safe_burst = max(1, burst - margin)
        interval = 1.0 / rate
        return cls(interval, (safe_burst - 1) * interval)

    def reserve(self, tat: float, earliest: float) -> tuple[float, float]:
        """(moment to send, new tat) for a request that may go at ``earliest`` at the soonest."""
        tat = min(max(tat, earliest), earliest + self.tolerance + MAX_BACKLOG_S)
        return max(earliest, tat - self.tolerance), tat + self.interval

    def full(self, now: float) -> float:
        """The tat of a full bucket: the next request waits one interval."""
        return now + self.tolerance + self.interval


#: (the clock's name, seconds on it): moments that processes of one machine can compare.
Clock = Callable[[], tuple[str, float]]
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


@cache
def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def machine_clock() -> tuple[str, float]:
    """Now on a clock that every process of this machine reads alike and nobody steps.

    Linux: CLOCK_BOOTTIME (it counts a suspend, as the portal's bucket drains meanwhile too),
    named by the kernel's boot id, so a moment saved before a reboot is never read on the new
    boot's clock. Elsewhere (no boot id to name it by): the wall clock, steps and all.
    """
    boot = _boot_id()
    if boot is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return "wall", time.time()
    return f"boot:{boot}", time.clock_gettime(time.CLOCK_BOOTTIME)


class _Store(Protocol):
    def update(self, change: Callable[[dict[str, Any]], T]) -> T: ...


class MemoryStore:
    """State for one process (``B24_RATE_LIMITER=memory``): threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        with self._lock:
            return change(self._data)


class FileStore:
    """State shared by every process through one small JSON file (state.py does the writing)."""

    def __init__(self, path: Path, schema: Mapping[str, Any]) -> None:
        self._path = path
        self._schema = schema
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
                # Rewritten in place (only ever read under this lock): a rename per call was
                # 2-6 ms of a call on a busy disk.
                if not state.overwrite_json(self._path, data, durable=False):
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


class DictBucket:
    """The bucket and method budgets as one dict in a store that serialises updates: the
    bucket as ``{"clock": name, "tat": moment}`` under ``bucket`` (on ``clock``, see the module
    docstring; a moment on another clock, such as an earlier boot's, is dropped), the methods'
    entries under ``methods``."""

    def __init__(self, store: _Store, model: BucketModel, clock: Clock = machine_clock) -> None:
        self._store = store
        self.model = model
        self._clock = clock

    def _tat(self, data: dict[str, Any], clock: str) -> float:
        """The bucket's tat on ``clock``; 0 (an empty bucket) when it was kept on another."""
        bucket = data.get("bucket")
        return float(bucket["tat"]) if bucket and bucket["clock"] == clock else 0.0

    def reserve(self, key: str | None, now: float) -> Slot:
        return self._store.update(partial(self._reserve, key=key, now=now))

    def _reserve(self, data: dict[str, Any], *, key: str | None, now: float) -> Slot:
        """Under the store's lock: hold a method over its soft budget, else reserve a slot."""
        methods = data.setdefault("methods", {})
        for name in [k for k, v in methods.items() if v["reset_at"] + FORGET_AFTER_S < now]:
            del methods[name]
        watched = frozenset(methods)
        entry = methods.get(key or "") if key is not None else None
        if (
            entry is not None
            and entry["operating"] >= OPERATING_BUDGET_S * OPERATING_SOFT_SHARE
            and entry["reset_at"] > now
        ):
            return Slot(0.0, (entry["operating"], entry["reset_at"]), watched)
        clock, ticks = self._clock()
        send_at, tat = self.model.reserve(self._tat(data, clock), ticks)
        data["bucket"] = {"clock": clock, "tat": tat}
        return Slot(send_at - ticks, None, watched)

    def fill(self, now: float) -> None:
        def change(data: dict[str, Any]) -> None:
            clock, ticks = self._clock()
            tat = max(self._tat(data, clock), self.model.full(ticks))
            data["bucket"] = {"clock": clock, "tat": tat}

        self._store.update(change)

    def book(self, key: str, operating: float, reset_at: float | None, now: float) -> None:
        def change(data: dict[str, Any]) -> None:
            methods = data.setdefault("methods", {})
            known = methods.get(key, {}).get("reset_at", 0.0)
            until = reset_at or (known if known > now else now + UNKNOWN_RESET_S)
            methods[key] = {"operating": operating, "reset_at": until}

        self._store.update(change)
