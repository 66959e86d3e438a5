"""The sandbox's JSON out: PHP's ``json_encode`` spelling, and rows rendered once, not per answer.

Bitrix24 answers compact JSON with non-ASCII escaped (PHP's defaults), which is also the fastest
spelling for ``json``'s C encoder. A full export asks for every row of a table in the default
``select`` shape, which turns a stored row into 50 strings and back into JSON: that was most of
the sandbox's CPU in the export benchmark. ``RenderCache`` keeps each row's rendered JSON next to
the stored text it came from and reuses it while the stored text is unchanged, so a cached answer
can never be stale; ``encode`` splices those fragments into the answer as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["RenderCache", "RowJSON", "encode"]

#: What a ``RowJSON`` is encoded as first; swapped for its fragment afterwards. A payload that
#: holds this exact string itself is caught by the count check in ``encode``.
_MARK = "\x00b24-row\x00"
_MARK_JSON = json.dumps(_MARK)


class RowJSON(Mapping[str, Any]):
    """A row whose JSON text is already known. It reads like the dict it encodes (``batch``
    follows ``$result[p0][49][ID]`` into it); the dict is decoded only if someone looks."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._value is None:
            self._value = json.loads(self.text)
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())


def _dumps(payload: Any, default: Callable[[Any], Any] | None = None) -> str:
    return json.dumps(payload, separators=(",", ":"), default=default)


def encode(payload: Any) -> bytes:
    """``payload`` as compact ASCII JSON bytes, ``RowJSON`` values spliced in verbatim."""
    fragments: list[str] = []

    def row_mark(value: Any) -> Any:
        if isinstance(value, RowJSON):
            fragments.append(value.text)
            return _MARK
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    text = _dumps(payload, row_mark)
    if not fragments:
        return text.encode("ascii")
    parts = text.split(_MARK_JSON)
    if len(parts) != len(fragments) + 1:  # the payload carried the mark itself: go the long way
        return _dumps(payload, lambda value: dict(value)).encode("ascii")
    spliced = [parts[0]]
    for fragment, part in zip(fragments, parts[1:], strict=True):
        spliced += (fragment, part)
    return "".join(spliced).encode("ascii")


class RenderCache:
    """Rendered JSON per ``(table, id)``, valid while the row's stored text is the same."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], tuple[str, str]] = {}

    def row(self, table: str, row_id: int, stored: str, render: Callable[[], Any]) -> RowJSON:
        """The row as ``render()`` shows it, rendered now only if ``stored`` changed."""
        known = self._rows.get((table, row_id))
        if known is not None and known[0] == stored:
            return RowJSON(known[1])
        text = _dumps(render())
        self._rows[(table, row_id)] = (stored, text)
        return RowJSON(text)

    def clear(self) -> None:
        self._rows.clear()
