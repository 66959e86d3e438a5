"""Tool results an MCP host can take: under its size cap, secrets masked, errors as tool errors.

Claude Code refuses a tool result over 25,000 tokens, and others cut silently, so a result is
kept under ``MAX_BYTES`` of compact JSON in UTF-8 (at the ~2.4 bytes a token that dense JSON
costs at worst, that is under 25,000 tokens; a Cyrillic letter is two bytes, so Russian CRM
text is budgeted by what it costs, not by its length in characters). A list answer keeps as
many whole rows as fit and says so in ``truncated``: how many rows were shown and the ``start``
that continues after them (or b24_export for every row). An answer with no row list to cut is
saved whole to a file in the export folder and ``truncated`` names it; so is any other result
past the cap (``ok_result`` checks every one). A plan past the cap is answered by its summary
(``fit_plan``): id, digest, sizes and where it is shown whole. Errors become ``isError``
results carrying our code, message and hint, the same object the CLI prints on stderr, and
kept under ``MAX_BYTES`` too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from mcp.types import CallToolResult, TextContent

from ..errors import B24Error, clip

__all__ = ["MAX_BYTES", "Spill", "error_result", "fit_plan", "fit_rows", "ok_result", "to_text"]

MAX_BYTES = 60_000
#: Room kept for the envelope and the ``truncated`` marker around the rows.
_MARKER_ROOM = 1_000

Mask = Callable[[str], str]
#: Saves a whole answer to a file; returns what the ``truncated`` marker says about it.
Spill = Callable[[Any], Mapping[str, Any]]
#: What a plan's summary keeps when the plan is past the cap.
_PLAN_HEAD = ("id", "method", "api", "risk", "portal", "params_digest", "created_at", "expires_at")


def to_text(document: Any) -> str:
    """Compact JSON, the form of every result."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _size(document: Any) -> int:
    return len(to_text(document).encode("utf-8"))


def ok_result(document: Any, mask: Mask, spill: Spill) -> CallToolResult:
    """A successful result: the document as compact JSON text, masked; one still past
    ``MAX_BYTES`` (the tools shape theirs first) is saved whole with ``spill`` and named."""
    text = mask(to_text(document))
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        marker = {"reason": f"the answer is {size} bytes", **spill(document)}
        text = mask(to_text({"truncated": marker}))
    return CallToolResult(content=[TextContent(type="text", text=text)])


def fit_plan(answer: Mapping[str, Any], whole: str) -> dict[str, Any]:
    """A plan tool's ``answer`` itself when it fits, else with the plan cut to its summary: id,
    digest, call count and the size of what was left out; ``whole`` says where it is shown
    whole. The plan is not saved again to a file: it is stored already, and what runs is that."""
    document = dict(answer)
    size = _size(document)
    if size <= MAX_BYTES:
        return document
    plan = document["plan"]
    left_out = ("params", "preview", "previews")
    document["plan"] = {
        **{key: plan[key] for key in _PLAN_HEAD if key in plan},
        "calls": len(plan.get("lines") or ()) or 1,
        "bytes_left_out": {key: _size(plan[key]) for key in left_out if plan.get(key)},
    }
    document["shown"] = {
        "reason": f"the plan is {size} bytes, past this tool's {MAX_BYTES}-byte result cap: "
        "its params and previews are left out here",
        "whole": whole,
    }
    return document


def error_result(error: B24Error, mask: Mask) -> CallToolResult:
    """A tool error: ``{"error": {code, message, hint, retryable}}``, masked. The portal's
    text in it is already cut (errors.py); should an error still pass ``MAX_BYTES``, each of
    its texts is cut the same way, so no error result can pass the cap either."""
    document = error.to_json()
    if _size(document) > MAX_BYTES:
        fields = document["error"].items()
        document = {"error": {k: clip(v) if isinstance(v, str) else v for k, v in fields}}
    return CallToolResult(
        content=[TextContent(type="text", text=mask(to_text(document)))], is_error=True
    )


def _rows_at(body: Mapping[str, Any]) -> tuple[list[Any], str | None] | None:
    """The row list of a list answer and the key holding it inside ``result`` (None: result)."""
    result = body.get("result")
    if isinstance(result, list):
        return result, None
    if isinstance(result, Mapping):
        lists = [(k, v) for k, v in result.items() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0][1], lists[0][0]
    return None


def fit_rows(body: Mapping[str, Any], start: int, spill: Spill) -> dict[str, Any]:
    """``body`` itself when it fits, else the rows that fit plus a ``truncated`` marker.

    ``start`` is the offset the call asked for; ``spill`` saves a whole answer that has no rows
    to cut and returns what the marker should say about the file.
    """
    document = dict(body)
    size = _size(document)
    if size <= MAX_BYTES:
        return document
    found = _rows_at(document)
    if found is None:
        return {"truncated": {"reason": f"the answer is {size} bytes", **spill(document)}}
    rows, key = found
    room = MAX_BYTES - _MARKER_ROOM - (size - _size(rows))
    kept: list[Any] = []
    used = 2
    for row in rows:
        used += _size(row) + 1
        if used > room:
            break
        kept.append(row)
    if key is None:
        document["result"] = kept
    else:
        document["result"] = {**document["result"], key: kept}
    document["truncated"] = {
        "rows_shown": len(kept),
        "rows_in_answer": len(rows),
        "next_start": start + len(kept),
        "hint": "call again with params.start = next_start for the next rows, or use b24_export "
        "to get every row in a file",
    }
    if _size(document) > MAX_BYTES:  # the answer's other fields alone are too big
        return {"truncated": {"reason": f"the answer is {size} bytes", **spill(dict(body))}}
    return document
