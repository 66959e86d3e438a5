"""The portal's two limiters (limits.md): the request-rate leaky bucket and the per-method
operating-time budget.

Both reject *before* the method runs, so a client may safely retry any call they refused, writes
included; that guarantee is what the client's retry policy relies on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .config import SandboxConfig
from .errors import PortalError

#: Operating time is kept in ten one-minute baskets; each lives 10 minutes from its first call.
BASKET_S = 60.0
WINDOW_S = 600.0
#: Calls faster than this are not counted (protocol.md section 4).
MIN_COUNTED_S = 0.1


class RequestBucket:
    """Leaky bucket per portal: each REST request adds 1 and the level drains at the plan's rate.
    A request that would lift the level above the capacity is refused and adds nothing."""

    def __init__(self, config: Callable[[], SandboxConfig]) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._level = 0.0
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Admit one request (True) or refuse it (False)."""
        limits = self._config().bucket()
        with self._lock:
            now = time.monotonic()
            if limits is None:
                self._level, self._stamp = 0.0, now
                return True
            rate, capacity = limits
            self._level = max(0.0, self._level - (now - self._stamp) * rate)
            self._stamp = now
            if self._level + 1 > capacity:
                return False
            self._level += 1
            return True

    def reset(self) -> None:
        with self._lock:
            self._level, self._stamp = 0.0, time.monotonic()


def limit_error() -> PortalError:
    return PortalError("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)


class OperatingBudget:
    """Handler seconds per (credential, method) over the last ten minutes.

    The check runs before a call: once the sum already exceeds the budget the call is refused
    with 429 OPERATION_TIME_LIMIT until the oldest basket drops out of the window.
    """

    def __init__(self, config: Callable[[], SandboxConfig]) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._baskets: dict[tuple[str, str], list[list[float]]] = {}

    def _live(self, key: tuple[str, str], now: float) -> list[list[float]]:
        baskets = [b for b in self._baskets.get(key, []) if b[0] + WINDOW_S > now]
        if baskets:
            self._baskets[key] = baskets
        else:
            self._baskets.pop(key, None)
        return baskets

    def state(self, credential: str, method: str) -> tuple[float, int]:
        """(operating seconds in the window, unix time the oldest basket leaves it)."""
        now = time.time()
        with self._lock:
            baskets = self._live((credential, method), now)
            used = sum(b[1] for b in baskets)
            oldest = baskets[0][0] if baskets else now
        return used, int(oldest + WINDOW_S)

    def check(self, credential: str, method: str) -> None:
        used, reset_at = self.state(credential, method)
        config = self._config()
        if used > config.operating_budget_s:
            # limits.md shows no reset time in the refusal: a client takes it from the last
            # successful answer's ``time``. The setting adds it for clients that read it.
            extra = {"operating_reset_at": reset_at} if config.reset_at_in_limit_error else {}
            raise PortalError(
                "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit", 429, extra
            )

    def record(self, credential: str, method: str, seconds: float) -> None:
        if seconds < MIN_COUNTED_S:
            return
        now = time.time()
        key = (credential, method)
        with self._lock:
            baskets = self._live(key, now)
            if baskets and now < baskets[-1][0] + BASKET_S:
                baskets[-1][1] += seconds
            else:
                baskets.append([now, seconds])
                self._baskets[key] = baskets

    def reset(self) -> None:
        with self._lock:
            self._baskets.clear()
