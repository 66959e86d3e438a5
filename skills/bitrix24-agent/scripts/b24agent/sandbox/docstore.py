"""JSON documents by kind: the storage of the sandbox areas that need no SQL of their own.

Chats, notifications, calendar events, workgroups, feed posts, workflows, files, bots and scrum
items are read back by id or by a few equal fields, never filtered at scale, so one ``docs``
table (created by ``store``, emptied by its reset) holds them all as ``(kind, id, JSON)`` rows.
Writes go through ``Store.transaction`` so a handler that fails midway leaves nothing behind, and
ids come from the store's named counters: per kind, starting at 1, never reused (as in Bitrix24).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

from .admin import admin_op
from .args import upper_keys
from .envelope import Page
from .errors import argument_error
from .filters import PAGE_SIZE, make_page, page_start
from .store import Store

__all__ = ["add", "find", "get", "matches", "page", "put", "remove", "sort"]

Doc = dict[str, Any]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def add(store: Store, kind: str, data: Doc, id_key: str = "ID") -> Doc:
    """Store a new document of ``kind`` under the next id, written into ``data[id_key]``."""
    with store.transaction() as conn:
        doc = {**data, id_key: store.next_value(f"doc:{kind}")}
        conn.execute(
            "INSERT INTO docs (kind, id, data) VALUES (?, ?, ?)", (kind, doc[id_key], _dumps(doc))
        )
    return doc


def get(store: Store, kind: str, doc_id: int) -> Doc | None:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT data FROM docs WHERE kind = ? AND id = ?", (kind, doc_id)
        ).fetchone()
    return json.loads(row[0]) if row else None


def put(store: Store, kind: str, doc_id: int, doc: Doc) -> None:
    """Replace (or create) the document ``doc_id`` of ``kind``."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO docs (kind, id, data) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data",
            (kind, doc_id, _dumps(doc)),
        )


def remove(store: Store, kind: str, doc_id: int) -> bool:
    with store.transaction() as conn:
        deleted = conn.execute("DELETE FROM docs WHERE kind = ? AND id = ?", (kind, doc_id))
    return deleted.rowcount > 0


def find(
    store: Store, kind: str, where: Callable[[Doc], bool] | None = None, **equal: Any
) -> list[Doc]:
    """Documents of ``kind`` in id order whose fields equal ``equal`` and that pass ``where``."""
    with store.transaction() as conn:
        rows = conn.execute("SELECT data FROM docs WHERE kind = ? ORDER BY id", (kind,)).fetchall()
    docs = [json.loads(row[0]) for row in rows]
    return [
        d
        for d in docs
        if all(d.get(k) == v for k, v in equal.items()) and (where is None or where(d))
    ]


#: Filter key prefixes, longest first so ``!=`` is not read as ``!``.
_OPS = ("!=", ">=", "<=", "!%", "=", "!", ">", "<", "%", "@")


def _number(value: Any) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def _compare(op: str, value: Any, wanted: Any) -> bool:
    if op in ("%", "!%"):
        return str(wanted).lower() in str(value if value is not None else "").lower()
    if op in ("", "=", "!", "!=", "@"):
        options = wanted if isinstance(wanted, list) else [wanted]
        return str(value if value is not None else "") in {str(o) for o in options}
    left, right = _number(value), _number(wanted)
    pair = (left, right) if left is not None and right is not None else (str(value), str(wanted))
    return {">": pair[0] > pair[1], ">=": pair[0] >= pair[1], "<": pair[0] < pair[1]}.get(
        op, pair[0] <= pair[1]
    )


def matches(doc: Doc, conditions: Any, allowed: Collection[str]) -> bool:
    """Whether ``doc`` passes a list method's ``filter`` (``{"STATUS": "active", "!ID": 3,
    ">=SORT": 10, "%NAME": "team"}``; a list value means "any of"). Field names are matched in
    upper case against ``allowed``; another field is refused with ERROR_ARGUMENT rather than
    ignored, so a mistyped filter never silently matches everything."""
    for key, wanted in upper_keys(conditions).items():
        op = next((o for o in _OPS if key.startswith(o)), "")
        field = key[len(op) :]
        if field not in allowed:
            raise argument_error(f"Invalid filter field {field}", "filter")
        hit = _compare(op, doc.get(field), wanted)
        if hit == op.startswith("!"):
            return False
    return True


def sort(
    docs: list[Doc],
    order: Any,
    allowed: Collection[str],
    value: Callable[[Doc, str], Any] = lambda doc, name: doc.get(name),
) -> None:
    """Sort ``docs`` in place by an ``order`` parameter (``{"ID": "DESC", ...}``, any key case)
    over the ``allowed`` UPPER_CASE fields; another field is answered with ERROR_ARGUMENT.
    Missing values sort first, as NULLs do in the portal's ascending order."""
    for name, direction in reversed(list(upper_keys(order).items())):
        if name not in allowed:
            raise argument_error(f"Invalid order field {name}", "order")
        docs.sort(
            key=lambda doc, n=name: (value(doc, n) is not None, value(doc, n)),
            reverse=str(direction).strip().upper() == "DESC",
        )


def page(items: list[Any], start: Any) -> Page:
    """One page of an in-memory result, with ``total``/``next`` like every list method."""
    offset, counted = page_start(start)
    return make_page(items[offset : offset + PAGE_SIZE], len(items), offset, counted)


@admin_op("POST", "docs")
def _docs(portal: Any, payload: dict[str, Any]) -> Any:
    """Every document of ``kind`` (e.g. ``notify``, ``calendar_event``), for tests to check."""
    kind = payload.get("kind")
    if not isinstance(kind, str) or not kind:
        raise argument_error("kind must be a non-empty string", "kind")
    return {"docs": find(portal.store, kind)}
