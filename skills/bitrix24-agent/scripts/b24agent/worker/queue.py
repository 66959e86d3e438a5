"""The four ``event.offline.*`` calls the worker makes, and which of them may be resent.

Retries of portal calls live in the client; this module only says, per call, whether resending
is harmless (``write=False`` lets the client retry a 5xx):

- ``get`` without a process id reserves new rows: if its answer is lost the rows sit reserved
  under an id we never saw, so it is sent as a write (never resent blindly) and the worker scans
  for such orphans instead;
- ``clear`` and ``error`` for given ids, and ``list``, give the same end state when repeated.

Rows are cleared by ``id``, not ``message_id``: two rows of one reservation can share a
MESSAGE_ID (a change queued again after the first row was reserved), and clearing by message id
would drop the one not handled yet. ``event.offline.error`` only accepts message ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..encoding import php_map
from ..errors import server_fault
from .delivery import event_id

__all__ = ["OfflineQueue", "Reserved"]

#: Ids per clear/error call: one request per reservation at the default --limit.
CHUNK = 1000


class _Client(Protocol):
    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, write: bool | None = None
    ) -> Any: ...

    def iter_all(self, method: str, params: Mapping[str, Any] | None = None) -> Iterable[Any]: ...


@dataclass(frozen=True)
class Reserved:
    """One ``event.offline.get`` answer: the new process id and its rows (oldest first)."""

    process_id: str | None
    rows: list[dict[str, Any]]


def _rows(value: Any) -> list[dict[str, Any]]:
    """Event rows from a list or a PHP-style map (``[]`` / ``{}`` / ``{"0": row, ...}``)."""
    items = value if isinstance(value, list) else list(php_map(value).values())
    return [dict(item) for item in items if isinstance(item, Mapping) and "ID" in item]


def _chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


class OfflineQueue:
    """The portal's offline queue, seen through a Bitrix24Client with OAuth app auth."""

    def __init__(
        self,
        client: _Client,
        *,
        limit: int,
        event_names: Sequence[str] = (),
        auth_connector: str | None = None,
    ) -> None:
        self._client = client
        self.limit = limit
        self._connector = {"auth_connector": auth_connector} if auth_connector else {}
        names = [name.upper() for name in event_names]
        if len(names) == 1:
            self._filter: dict[str, Any] = {"EVENT_NAME": names[0]}
        elif names:
            self._filter = {"@EVENT_NAME": names}
        else:
            self._filter = {}

    def reserve(self, *, errors: bool = False) -> Reserved:
        """Reserve up to ``limit`` free rows (``error=1``: rows flagged by event.offline.error)."""
        params: dict[str, Any] = {"clear": 0, "limit": self.limit, **self._connector}
        if self._filter:
            params["filter"] = self._filter
        if errors:
            params["error"] = 1
        result = self._client.call("event.offline.get", params, write=True).result
        try:
            answer = php_map(result)
            rows = _rows(answer.get("events"))
        except TypeError:
            # Rows may have been reserved all the same: treat it like a lost answer.
            raise server_fault(
                "ERROR_UNEXPECTED_ANSWER",
                "event.offline.get answered without a process_id/events object",
                None,
                write=True,
            ) from None
        process_id = answer.get("process_id")
        return Reserved(str(process_id) if process_id else None, rows)

    def clear(self, process_id: str, ids: Sequence[str]) -> None:
        """Delete these reserved rows of ``process_id`` from the portal."""
        for chunk in _chunks(ids):
            params = {"process_id": process_id, "id": chunk, **self._connector}
            self._client.call("event.offline.clear", params, write=False)

    def flag_errors(self, process_id: str, message_ids: Sequence[str]) -> None:
        """Mark these rows ERROR=1 (the portal releases them to the error pool)."""
        for chunk in _chunks(message_ids):
            params = {"process_id": process_id, "message_id": chunk, **self._connector}
            self._client.call("event.offline.error", params, write=False)

    def reserved_elsewhere(self, known: set[str]) -> dict[str, list[dict[str, Any]]]:
        """Rows reserved under process ids not in ``known``, grouped by process id.

        The filter asks the portal for reserved rows only; rows are checked again here, since a
        portal that ignores the filter must not make free rows look adoptable.
        """
        params = {"filter": {"!PROCESS_ID": ""}, "order": {"ID": "ASC"}, **self._connector}
        groups: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for row in self._client.iter_all("event.offline.list", params):
            if not isinstance(row, Mapping):
                continue
            pid = str(row.get("PROCESS_ID") or "")
            key = event_id(row)
            if pid and pid not in known and key not in seen:
                seen.add(key)
                groups.setdefault(pid, []).append(dict(row))
        return groups
