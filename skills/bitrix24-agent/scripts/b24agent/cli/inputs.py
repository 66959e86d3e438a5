"""What the CLI reads besides flags: call params and batch files.

Agents build params in many ways: inline JSON, a file written by an earlier step (``@file``), or a
pipe (``-``). Every form goes through here so a bad input always becomes one ``UsageError`` that
names the flag, the file and the position, before any request leaves the machine.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..encoding import loads_strict
from ..errors import UsageError, ValidationError

__all__ = ["BatchLine", "read_batch_file", "read_params"]


@dataclass(frozen=True)
class BatchLine:
    """One call of a batch file, with the file line it came from (for messages and output)."""

    line: int
    method: str
    params: dict[str, Any]


def _read_source(spec: str, flag: str, stdin: TextIO) -> tuple[str, str]:
    """Return ``(text, where)`` for ``-`` (stdin), ``@path`` / a path, naming the source."""
    if spec == "-":
        return stdin.read(), "stdin"
    path = Path(spec[1:] if spec.startswith("@") else spec).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"{flag}: cannot read {path}: {reason}",
            code="INPUT_UNREADABLE",
            hint=f"check the path given to {flag}",
        ) from None


def _json_problem(exc: ValueError, *, lines: bool = True) -> str:
    """Where and why ``loads_strict`` failed, without quoting the input."""
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} column {exc.colno}" if lines else f"column {exc.colno}"
        return f"{exc.msg} at {where}"
    return str(exc).split(";")[0]


def _parse_json(text: str, where: str, flag: str) -> Any:
    try:
        return loads_strict(text)
    except ValueError as exc:
        raise UsageError(
            f"{flag}: {where} is not valid JSON: {_json_problem(exc)}",
            code="INVALID_JSON",
            hint=f"""pass a JSON object, e.g. {flag} '{{"id": 1}}'""",
        ) from None


def read_params(spec: str | None, *, stdin: TextIO | None = None) -> dict[str, Any]:
    """``--params``: inline JSON, ``@file.json`` or ``-`` (stdin); it must be a JSON object."""
    if spec is None:
        return {}
    if spec == "-" or spec.startswith("@"):
        text, where = _read_source(spec, "--params", stdin or sys.stdin)
    else:
        text, where = spec, "the value"
    params = _parse_json(text, where, "--params")
    if not isinstance(params, dict):
        raise ValidationError(
            f"--params: {where} must be a JSON object, got {type(params).__name__}",
            code="INVALID_PARAMS",
            hint="""wrap the values in an object, e.g. --params '{"id": 1}'""",
        )
    return params


def read_batch_file(spec: str, *, stdin: TextIO | None = None) -> list[BatchLine]:
    """Read and validate a whole JSONL batch file before anything is sent.

    Validating every line first is the point: a typo on line 90 must not leave lines 1-89 done
    and the rest not, which an agent would then have to untangle.
    """
    from ..rest.schemas import validate_batch_line  # jsonschema is only paid for when used

    text, where = _read_source(spec, "--batch-file", stdin or sys.stdin)
    lines = list(_batch_lines(text, where, validate_batch_line))
    if not lines:
        raise UsageError(
            f"--batch-file: {where} holds no calls",
            code="INVALID_BATCH_FILE",
            hint='write one {"method": ..., "params": {...}} object per line',
        )
    return lines


def _batch_lines(
    text: str, where: str, validate: Callable[..., tuple[str, dict[str, Any]]]
) -> Iterator[BatchLine]:
    # JSON Lines ends a line at "\n" only: str.splitlines() would also split inside a value
    # at U+2028, U+0085 or a form feed, which JSON strings may hold unescaped.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = loads_strict(raw)
        except ValueError as exc:
            raise UsageError(
                f"--batch-file {where} line {number}: not valid JSON: "
                f"{_json_problem(exc, lines=False)}",
                code="INVALID_JSON",
                hint='write one {"method": ..., "params": {...}} object per line',
            ) from None
        method, params = validate(item, where=f"--batch-file {where} line {number}")
        yield BatchLine(number, method, params)
