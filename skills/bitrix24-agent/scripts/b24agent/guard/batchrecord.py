"""A batch file's per-line outcomes as JSON, so an idempotency record can replay them.

A replayed batch file must print what the first run printed, failures included, and exit with
the same code; so each line keeps its result, or its error's code, message, hint and exit code,
and comes back as the same class of error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import (
    ApiError,
    AuthError,
    B24Error,
    ConflictError,
    Interrupted,
    OutcomeUnknownError,
    PolicyError,
    TransientError,
    UsageError,
)

__all__ = ["dump_outcomes", "load_outcomes"]

_BY_EXIT: dict[int, type[B24Error]] = {
    cls.exit_code: cls
    for cls in (
        ApiError,
        UsageError,
        PolicyError,
        AuthError,
        ConflictError,
        TransientError,
        OutcomeUnknownError,
        Interrupted,
    )
}


def dump_outcomes(outcomes: Iterable[Any]) -> dict[str, Any]:
    """``{"calls": [...]}`` from CallOutcome-like items (``call.line``, ``call.method``,
    ``result``, ``error``), in order."""
    lines = []
    for outcome in outcomes:
        line: dict[str, Any] = {"line": outcome.call.line, "method": outcome.call.method}
        if outcome.error is None:
            line["result"] = outcome.result
        else:
            line["error"] = outcome.error.to_json()["error"]
            line["exit_code"] = outcome.error.exit_code
        lines.append(line)
    return {"calls": lines}


def _revive(line: Mapping[str, Any]) -> B24Error:
    error = line["error"]
    cls = _BY_EXIT.get(int(line.get("exit_code", 1)), B24Error)
    return cls(
        str(error.get("message", "")),
        code=str(error.get("code", "")),
        hint=str(error.get("hint", "")),
        retryable=bool(error.get("retryable", False)),
    )


def load_outcomes(body: Mapping[str, Any]) -> list[tuple[int, Any, B24Error | None]]:
    """``(position, result, error)`` per stored line, in the order they were run."""
    return [
        (position, line.get("result"), _revive(line) if "error" in line else None)
        for position, line in enumerate(body.get("calls") or [])
    ]
