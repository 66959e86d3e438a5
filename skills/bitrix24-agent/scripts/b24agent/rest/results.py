"""What the client hands back: one call, one batch, one item of a many-call run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import B24Error

__all__ = ["BatchResult", "CallResult", "ItemOutcome"]


@dataclass
class CallResult:
    """A successful call. ``body`` is the whole envelope as the portal sent it; ``replayed`` is
    True when a REST 3.0 portal answered from its Idempotency-Key store instead of running."""

    result: Any
    total: int | None
    next: int | None
    time: dict[str, Any]
    body: dict[str, Any] = field(repr=False)
    http_status: int
    replayed: bool = False


@dataclass
class BatchResult:
    """Per-command outcomes of one batch, keyed by command name (``"0"``.. for a sequence).

    A name is in exactly one of ``results`` and ``errors``; commands that ``halt`` stopped
    carry a BATCH_HALTED error (they provably did not run).
    """

    results: dict[str, Any]
    errors: dict[str, B24Error]
    totals: dict[str, int]
    nexts: dict[str, int]
    times: dict[str, dict[str, Any]]
    call: CallResult | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ItemOutcome:
    """One call of ``call_many``, in input order."""

    index: int
    method: str
    result: Any = None
    error: B24Error | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
