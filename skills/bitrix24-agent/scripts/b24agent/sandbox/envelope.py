"""What a handler returns and how the portal wraps it into a Bitrix24 success body.

A handler returns either a plain value (the ``result``) or a ``Page`` for list methods, whose
``total`` and ``next`` travel at the top level of the envelope (and into ``result_total`` /
``result_next`` inside a batch). Keeping this in one place means list paging looks the same
whether a method is called directly or as a batch command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["Page", "Timing", "success_body", "unwrap"]


@dataclass(frozen=True)
class Page:
    """One page of a list method: ``items`` is the ``result``; ``next`` is None on the last page."""

    items: Any
    total: int
    next: int | None = None


def unwrap(value: Any) -> Any:
    """The ``result`` part of a handler's return value."""
    return value.items if isinstance(value, Page) else value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class Timing:
    """The ``time`` block: wall clock of the call plus the method's operating-time window."""

    start: float
    finish: float
    processing: float
    operating: float | None = None
    operating_reset_at: int | None = None

    @classmethod
    def since(cls, start: float) -> Timing:
        """A call that started at ``start`` (unix time) and ends now."""
        finish = time.time()
        return cls(start, finish, finish - start)

    def as_dict(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "start": self.start,
            "finish": self.finish,
            "duration": self.finish - self.start,
            "processing": self.processing,
            "date_start": _iso(self.start),
            "date_finish": _iso(self.finish),
        }
        if self.operating is not None:
            block["operating_reset_at"] = self.operating_reset_at
            block["operating"] = self.operating
        return block


def success_body(value: Any, timing: Timing, php: bool = True) -> dict[str, Any]:
    """The success envelope. On v2 (``php``) a bare empty map goes out as ``[]``, as PHP's
    json_encode writes an empty array; REST 3.0 answers proper JSON objects."""
    result = unwrap(value)
    body: dict[str, Any] = {"result": [] if php and result == {} else result}
    if isinstance(value, Page):
        if value.next is not None:
            body["next"] = value.next
        body["total"] = value.total
    body["time"] = timing.as_dict()
    return body
