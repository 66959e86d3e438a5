"""The record a single-record update or delete would touch: how to read it, diff and fingerprint it.

A plan for ``crm.lead.update`` is only reviewable if it shows what will change, field by field,
and only safe to execute later if the record is still the one that was reviewed. This module
knows which calls target one record (``crm.<entity>.update|delete``, ``crm.item.update|delete``,
``tasks.task.update|delete``), which ``get`` reads it, how to compare the new values with the
stored ones (Bitrix24 answers numbers as strings and tasks in camelCase), and the record's
fingerprint that execution compares.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .. import catalog
from ..errors import NotFoundError
from ..fingerprint import canonical_json, digest

__all__ = [
    "Reader",
    "RecordRef",
    "changes",
    "fetch",
    "preview",
    "record_fingerprint",
    "record_of",
    "record_ref",
]

#: Reads one method: ``reader(method, params)`` returns the call's ``result``.
Reader = Callable[[str, Mapping[str, Any]], Any]

_CRM = re.compile(r"^crm\.([a-z_]+)\.(update|delete)$")
_TASK = re.compile(r"^tasks\.task\.(update|delete)$")
#: Params that address the record; they are passed on to ``get`` as given.
_CRM_KEYS = ("entityTypeId", "id")
_WRAPPERS = ("item", "task")


@dataclass(frozen=True)
class RecordRef:
    """A call that changes one record: the ``get`` that reads it and the fields it would set."""

    action: Literal["update", "delete"]
    get_method: str
    get_params: dict[str, Any]
    fields: dict[str, Any]


def record_ref(method: str, params: Mapping[str, Any]) -> RecordRef | None:
    """The record ``method`` would change, or None when it is not a single-record change."""
    name = catalog.normalize(method)
    crm = _CRM.match(name)
    task = _TASK.match(name)
    if crm and "id" in params:
        entity, action = crm.groups()
        get_params = {k: params[k] for k in _CRM_KEYS if k in params}
        get_method = f"crm.{entity}.get"
    elif task and "taskId" in params:
        action = task.group(1)
        get_params = {"taskId": params["taskId"]}
        get_method = "tasks.task.get"
    else:
        return None
    fields = params.get("fields") if action == "update" else None
    return RecordRef(action, get_method, get_params, dict(fields or {}))  # type: ignore[arg-type]


def _unwrap(result: Any) -> Any:
    """``{"item": {...}}`` / ``{"task": {...}}`` shapes carry the record one level down."""
    if isinstance(result, Mapping) and len(result) == 1:
        ((key, value),) = result.items()
        if key in _WRAPPERS and isinstance(value, Mapping):
            return value
    return result


def fetch(ref: RecordRef, read: Reader) -> dict[str, Any] | None:
    """The record as the portal holds it now, or None when it no longer exists."""
    try:
        return record_of(read(ref.get_method, ref.get_params))
    except NotFoundError:
        return None


def record_of(result: Any) -> dict[str, Any] | None:
    """The record in a ``get`` call's result (None: the portal has no such record)."""
    if result is None:
        return None
    record = _unwrap(result)
    return dict(record) if isinstance(record, Mapping) else {"value": record}


def record_fingerprint(record: Mapping[str, Any] | None) -> str:
    """Digest of the whole record (None: absent), compared again when the plan runs."""
    return digest(record)


def _camel(key: str) -> str:
    head, *rest = key.lower().split("_")
    return head + "".join(part.title() for part in rest)


def _current(record: Mapping[str, Any], key: str) -> Any:
    """The stored value for an update key, tolerating UPPER_SNAKE against camelCase answers."""
    if key in record:
        return record[key]
    wanted = {key.lower(), _camel(key).lower()}
    for name, value in record.items():
        if name.lower() in wanted:
            return value
    return None


def _same(before: Any, after: Any) -> bool:
    """Equal as Bitrix24 stores them: ``"100.00"`` equals 100, ``"5"`` equals 5, None equals ""."""
    if isinstance(before, (Mapping, list)) or isinstance(after, (Mapping, list)):
        return canonical_json(before) == canonical_json(after)
    old, new = ("" if v is None else str(v) for v in (before, after))
    if old == new:
        return True
    try:
        return float(old) == float(new)
    except ValueError:
        return False


def changes(record: Mapping[str, Any], fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Field-by-field ``{"field", "before", "after"}`` for every field the update would change."""
    found = []
    for key, after in fields.items():
        before = _current(record, key)
        if not _same(before, after):
            found.append({"field": key, "before": before, "after": after})
    return found


def preview(ref: RecordRef, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a reviewer needs: the diff of an update, or the whole record a delete removes."""
    shown: dict[str, Any] = {"action": ref.action, "read": {ref.get_method: ref.get_params}}
    if record is None:
        shown["exists"] = False
        return shown
    shown["exists"] = True
    if ref.action == "delete":
        shown["record"] = dict(record)
        return shown
    diff = changes(record, ref.fields)
    shown["changes"] = diff
    shown["unchanged"] = sorted(set(ref.fields) - {c["field"] for c in diff})
    return shown
