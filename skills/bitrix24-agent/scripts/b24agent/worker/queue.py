"""The four ``event.offline.*`` calls the worker makes, and which of them may be resent.

Retries of portal calls live in the client; this module only says, per call, whether resending
is harmless (``write=False`` lets the client retry a 5xx):

- ``get`` without a process id reserves new rows: if its answer is lost the rows sit reserved
  under an id we never saw, so it is sent as a write (never resent blindly) and the worker scans
  for such orphans instead;
- ``clear`` and ``error`` for given ids, and ``list``, give the same end state when repeated.

``turn`` sends the clear of the last reservation and the ``get`` of the next one as ONE batch
(both commands run, in that order, whatever the other's outcome): on a standard plan every
request counts against the bucket, and this halves a drain's requests. ``opening`` does the
same for the start: the orphan scan's first page, then the first ``get`` (batch.md: commands
run sequentially, so the scan sees only reservations made before that get, never the new
one). A batch holding a reserving ``get`` is a write too. Not with an ``auth_connector``: it is
a parameter of the request, and whether the portal reads it per batch command is not
documented (the sandbox takes the outer request's), so those queues keep one request per call.

Rows are cleared by ``id``, not ``message_id``: two rows of one reservation can share a
MESSAGE_ID (a change queued again after the first row was reserved), and clearing by message id
would drop the one not handled yet. ``event.offline.error`` only accepts message ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..encoding import php_map
from ..errors import B24Error, server_fault
from ..rest.results import BatchResult
from .delivery import event_id

__all__ = ["OfflineQueue", "Opening", "Reserved", "Turn"]

#: Ids per clear/error call: one request per reservation at the default --limit.
CHUNK = 1000
#: Rows per ``event.offline.list`` page (event-offline-list.md: always 50).
PAGE = 50


class _Client(Protocol):
    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, write: bool | None = None
    ) -> Any: ...

    def batch(
        self,
        commands: Mapping[str, tuple[str, Mapping[str, Any]]],
        *,
        params_checked: bool = False,
    ) -> BatchResult: ...

    def iter_all(self, method: str, params: Mapping[str, Any] | None = None) -> Iterable[Any]: ...


@dataclass(frozen=True)
class Reserved:
    """One ``event.offline.get`` answer: the new process id and its rows (oldest first)."""

    process_id: str | None
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Turn:
    """One ``turn`` batch: how the clear went (None = cleared) and the next reservation, or
    the error the portal answered the ``get`` with (nothing was reserved then)."""

    clear_error: B24Error | None
    reserved: Reserved | None
    get_error: B24Error | None


@dataclass(frozen=True)
class Opening:
    """One ``opening`` batch: the orphan scan's page when it is the whole scan (None: more
    pages exist, or the portal answered the list with ``scan_error``) and the first
    reservation (or the get's error; nothing was reserved then)."""

    scan_rows: list[dict[str, Any]] | None
    scan_error: B24Error | None
    reserved: Reserved | None
    get_error: B24Error | None


def _rows(value: Any) -> list[dict[str, Any]]:
    """Event rows from a list or a PHP-style map (``[]`` / ``{}`` / ``{"0": row, ...}``)."""
    items = value if isinstance(value, list) else list(php_map(value).values())
    return [dict(item) for item in items if isinstance(item, Mapping) and "ID" in item]


def _reserved(result: Any) -> Reserved:
    """A ``get`` result as rows and process id; an answer of another shape may still have
    reserved rows, so it counts as a lost answer (the worker scans for orphans)."""
    try:
        answer = php_map(result)
        rows = _rows(answer.get("events"))
    except TypeError:
        raise server_fault(
            "ERROR_UNEXPECTED_ANSWER",
            "event.offline.get answered without a process_id/events object",
            None,
            write=True,
        ) from None
    process_id = answer.get("process_id")
    return Reserved(str(process_id) if process_id else None, rows)


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
        batches: bool = True,
    ) -> None:
        """``batches``: whether ``client`` sends batches (the broker's portal does not)."""
        self._client = client
        self._batches = batches
        self.limit = limit
        self._connector = {"auth_connector": auth_connector} if auth_connector else {}
        names = [name.upper() for name in event_names]
        if len(names) == 1:
            self._filter: dict[str, Any] = {"EVENT_NAME": names[0]}
        elif names:
            self._filter = {"@EVENT_NAME": names}
        else:
            self._filter = {}

    @property
    def can_turn(self) -> bool:
        """Whether ``turn`` may be used: by a client that batches, for the queue without an
        ``auth_connector``."""
        return self._batches and not self._connector

    def _get_params(self, errors: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"clear": 0, "limit": self.limit, **self._connector}
        if self._filter:
            params["filter"] = self._filter
        if errors:
            params["error"] = 1
        return params

    def reserve(self, *, errors: bool = False) -> Reserved:
        """Reserve up to ``limit`` free rows (``error=1``: rows flagged by event.offline.error)."""
        params = self._get_params(errors)
        return _reserved(self._client.call("event.offline.get", params, write=True).result)

    def turn(self, process_id: str, ids: Sequence[str]) -> Turn:
        """Clear these rows of ``process_id`` and reserve the next ``limit`` rows, in one batch
        (one clear command per ``CHUNK`` ids, then the get)."""
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {
            f"clear{n}": ("event.offline.clear", self._clear_params(process_id, chunk))
            for n, chunk in enumerate(_chunks(ids))
        }
        commands["get"] = ("event.offline.get", self._get_params(False))
        # Built here from the portal's own ids: re-checking 1,000 ids against the schema cost
        # more than the request.
        answer = self._client.batch(commands, params_checked=True)
        clears = [name for name in commands if name != "get"]
        clear_error = next((answer.errors[n] for n in clears if n in answer.errors), None)
        reserved, get_error = _get_outcome(answer)
        return Turn(clear_error, reserved, get_error)

    def opening(self, *, errors: bool = False) -> Opening:
        """The orphan scan's first page and the first reservation, in one batch (the scan
        first; see the module docstring). Continue the scan with ``reserved_elsewhere``."""
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {
            "scan": ("event.offline.list", self._scan_params()),
            "get": ("event.offline.get", self._get_params(errors)),
        }
        answer = self._client.batch(commands)
        reserved, get_error = _get_outcome(answer)
        if "scan" in answer.errors:
            return Opening(None, answer.errors["scan"], reserved, get_error)
        rows = _rows(answer.results.get("scan"))
        whole = len(rows) < PAGE and "scan" not in answer.nexts
        return Opening(rows if whole else None, None, reserved, get_error)

    def _clear_params(self, process_id: str, ids: list[str]) -> dict[str, Any]:
        return {"process_id": process_id, "id": ids, **self._connector}

    def clear(self, process_id: str, ids: Sequence[str]) -> None:
        """Delete these reserved rows of ``process_id`` from the portal."""
        for chunk in _chunks(ids):
            self._client.call(
                "event.offline.clear", self._clear_params(process_id, chunk), write=False
            )

    def flag_errors(self, process_id: str, message_ids: Sequence[str]) -> None:
        """Mark these rows ERROR=1 (the portal releases them to the error pool)."""
        for chunk in _chunks(message_ids):
            params = {"process_id": process_id, "message_id": chunk, **self._connector}
            self._client.call("event.offline.error", params, write=False)

    def _scan_params(self) -> dict[str, Any]:
        return {"filter": {"!PROCESS_ID": ""}, "order": {"ID": "ASC"}, **self._connector}

    def reserved_elsewhere(
        self, known: set[str], scanned: list[dict[str, Any]] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Rows reserved under process ids not in ``known``, grouped by process id.

        ``scanned``: the whole scan, when ``opening`` brought it in one page; else every page
        is read here, and the rows of the get that came with the opening show there too, so
        its process id must be in ``known`` by then. The filter asks the portal for reserved
        rows only; rows are checked again here, since a portal that ignores the filter must not
        make free rows look adoptable.
        """
        rows: Iterable[Any] = scanned if scanned is not None else ()
        if scanned is None:
            rows = self._client.iter_all("event.offline.list", self._scan_params())
        groups: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            pid = str(row.get("PROCESS_ID") or "")
            key = event_id(row)
            if pid and pid not in known and key not in seen:
                seen.add(key)
                groups.setdefault(pid, []).append(dict(row))
        return groups


def _get_outcome(answer: BatchResult) -> tuple[Reserved | None, B24Error | None]:
    """A batch's ``get`` command: the reservation, or the error the portal answered it with."""
    if "get" in answer.errors:
        return None, answer.errors["get"]
    return _reserved(answer.results.get("get")), None
