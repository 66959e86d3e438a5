"""Request counters the tests and benchmarks read through admin ``stats``.

One lock guards every counter, so figures stay exact when hundreds of threads hit the portal at
once; ``snapshot`` copies under the same lock so a reader never sees a half-updated set.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

COUNTERS = (
    "requests",
    "rate_limit_rejections",
    "operating_limit_rejections",
    "token_refreshes",
    "failed_refreshes",
    "max_in_flight",
    "http_rejections",
    "command_refusals",
    "redirects",
)


class Stats:
    """Thread-safe counters: REST requests (a batch counts once, under ``batch``), rejections
    by each limiter, token-server outcomes and the most REST requests ever answered at once;
    ``http_rejections`` (whole requests refused by a limiter: 503 or 429) apart from
    ``command_refusals`` (batch commands refused by the operating-time limit inside a 200),
    so a benchmark can tell them apart.
    Admin calls are never counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._by_method: Counter[str] = Counter()
        self._open = 0

    def request(self, method: str) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._by_method[method] += 1

    def bump(self, counter: str) -> None:
        if counter not in COUNTERS:
            raise KeyError(counter)
        with self._lock:
            self._counts[counter] += 1

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Around one REST request: tracks how many are open now and the most ever open."""
        with self._lock:
            self._open += 1
            self._counts["max_in_flight"] = max(self._counts["max_in_flight"], self._open)
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._by_method.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = {name: self._counts[name] for name in COUNTERS}
            snap["by_method"] = dict(self._by_method)
        return snap
