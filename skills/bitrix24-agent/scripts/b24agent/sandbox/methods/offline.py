"""The offline event queue: ``event.offline.get|clear|error|list`` (protocol.md section 10;
api-reference/events/event-offline-*.md, offline-events.md).

OAuth app auth and an administrator are required (registry flags). A queue belongs to the app
and the request's ``auth_connector``. ``get`` without ``process_id`` reserves free rows under a
fresh process id; with ``clear=1`` (default) it deletes them at once and answers
``process_id: null``, with ``clear=0`` (feature ``rest_offline_extended``) they stay reserved and
come back only to a later call passing that ``process_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...encoding import php_map
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError, argument_error
from ..filters import (
    PAGE_SIZE,
    Column,
    FilterError,
    compile_filter,
    compile_order,
    make_page,
    page_start,
)
from ..registry import method

FEATURE = "rest_offline_extended"

_COLUMNS = {
    "ID": Column("id", "int"),
    "TIMESTAMP_X": Column("timestamp_x", "datetime"),
    "EVENT_NAME": Column("event_name", "text"),
    "MESSAGE_ID": Column("message_id", "text"),
    "PROCESS_ID": Column("process_id", "text"),
    "ERROR": Column("error", "int"),
}
#: ``get`` filters and orders by these; ``list`` also by PROCESS_ID and ERROR.
_GET_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")


def _resolver(names: tuple[str, ...]) -> Any:
    def resolve(name: str) -> Column | None:
        return _COLUMNS.get(name.upper()) if name.upper() in names else None

    return resolve


def _lower(params: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in params.items()}


def _queue(ctx: CallContext) -> tuple[str, str]:
    return ctx.auth.client_id or "", ctx.auth_connector or ""


def _int(query: Mapping[str, Any], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise argument_error("Value must be an integer", name.upper()) from None


def _row(row: dict[str, Any], with_state: bool) -> dict[str, Any]:
    """A queue row as the docs print it: string ID, ISO TIMESTAMP_X."""
    shown = {
        "ID": str(row["ID"]),
        "TIMESTAMP_X": iso_datetime(row["TIMESTAMP_X"]),
        "EVENT_NAME": row["EVENT_NAME"],
        "EVENT_DATA": row["EVENT_DATA"],
        "EVENT_ADDITIONAL": row["EVENT_ADDITIONAL"],
        "MESSAGE_ID": row["MESSAGE_ID"],
    }
    if with_state:
        shown.update(PROCESS_ID=row["PROCESS_ID"], ERROR=str(row["ERROR"]))
    return shown


def _where(
    query: Mapping[str, Any], fields: tuple[str, ...], default_order: dict[str, str]
) -> tuple[tuple[str, list[Any]], list[str]]:
    """(WHERE sql and values, ORDER BY terms) over the queue columns ``fields`` allows."""
    resolve = _resolver(fields)
    try:
        where = compile_filter(query.get("filter"), resolve)
        order = compile_order(query.get("order") or default_order, resolve)
    except FilterError as exc:
        raise argument_error(f"Invalid filter value for {exc.field}", exc.field) from None
    return where, order


def _process_id(query: Mapping[str, Any], required: bool) -> str | None:
    raw = query.get("process_id")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise argument_error("Argument 'PROCESS_ID' is null or empty", "PROCESS_ID")
        return None
    return str(raw).strip()


@method("event.offline.get", scope="basic", app_only=True, admin_only=True)
def get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    query = _lower(params)
    clear = _int(query, "clear", 1) != 0
    if not clear and FEATURE not in ctx.portal.config.features:
        raise PortalError("WRONG_LICENSE", "Wrong license: extended offline events handling", 403)
    limit = _int(query, "limit", PAGE_SIZE)
    if limit <= 0:
        raise argument_error("Value must be positive integer", "LIMIT")
    errors = _int(query, "error", 0) == 1
    (where, values), order = _where(query, _GET_FIELDS, {"TIMESTAMP_X": "ASC"})
    app, connector = _queue(ctx)
    process_id = _process_id(query, required=False)
    show_process = process_id is not None or not clear
    store = ctx.portal.store
    with store.transaction():
        if process_id is None:
            process_id = store.offline_reserve(app, connector, where, values, order, limit, errors)
        rows = store.offline_reserved(
            app, connector, process_id, errors, where, values, order, limit
        )
        if clear and rows:
            store.offline_clear(app, connector, process_id, ids=[int(r["ID"]) for r in rows])
    return {
        "process_id": process_id if show_process else None,
        "events": [_row(row, with_state=False) for row in rows],
    }


def _id_list(query: Mapping[str, Any], name: str) -> list[Any] | None:
    raw = query.get(name)
    if raw is None:
        return None
    if isinstance(raw, (str, int)):
        raw = [raw]
    try:
        return list(php_map(raw).values())
    except TypeError:
        raise argument_error(f"Value must be array of {name} values", name) from None


def _message_ids(query: Mapping[str, Any]) -> list[str] | None:
    """MESSAGE_IDs are 32-character md5 strings (the vendor refuses anything else)."""
    values = _id_list(query, "message_id")
    if values is None:
        return None
    cleaned = [str(v).strip() for v in values]
    if any(len(v) != 32 for v in cleaned):
        raise argument_error("Value must be array of MESSAGE_ID values", "message_id")
    return cleaned


@method("event.offline.clear", scope="basic", app_only=True, admin_only=True)
def clear(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Delete the process's rows: those in ``id``, else those in ``message_id``, else all
    (event-offline-clear.md: ``message_id`` is ignored when ``id`` is given)."""
    query = _lower(params)
    process_id = _process_id(query, required=True) or ""
    ids = _id_list(query, "id")
    if ids is not None:
        try:
            numbers = [int(str(v)) for v in ids]
        except ValueError:
            numbers = [0]
        if any(n <= 0 for n in numbers):
            raise argument_error("Value must be array of integers", "id")
        # An empty list clears everything, as in the vendor's code (it only filters when ids
        # were given), so a worker that sends [] by mistake finds out here, not in production.
        ctx.portal.store.offline_clear(*_queue(ctx), process_id, ids=numbers or None)
        return True
    message_ids = _message_ids(query)
    ctx.portal.store.offline_clear(*_queue(ctx), process_id, message_ids=message_ids or None)
    return True


@method("event.offline.error", scope="basic", app_only=True, admin_only=True)
def error(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Flag the process's rows with these MESSAGE_IDs as errors and release them: only
    ``get`` with ``error=1`` and ``list`` see them afterwards."""
    query = _lower(params)
    process_id = _process_id(query, required=True) or ""
    message_ids = _message_ids(query)
    if message_ids is None:
        raise argument_error("Value must be array of MESSAGE_ID values", "message_id")
    ctx.portal.store.offline_mark_error(*_queue(ctx), process_id, message_ids)
    return True


@method("event.offline.list", scope="basic", app_only=True, admin_only=True)
def list_(ctx: CallContext, params: dict[str, Any]) -> Page:
    """Read the queue without reserving; rows show PROCESS_ID and ERROR."""
    query = _lower(params)
    (where, values), order = _where(query, tuple(_COLUMNS), {"ID": "ASC"})
    offset, counted = page_start(query.get("start"))
    rows, total = ctx.portal.store.offline_select(
        *_queue(ctx), where, values, order, offset, PAGE_SIZE, counted
    )
    return make_page([_row(row, with_state=True) for row in rows], total, offset, counted)
