"""Tasks: ``tasks.task.*`` on ``/rest/`` (scope ``task``) and on REST 3.0 ``/rest/api/`` (scope
``tasks``), one table behind both (task_model renders it each way).

v2 errors are the odd codes its pages document (``0`` "Action on the task is not allowed",
``1048582`` for delete, ``ERROR_CORE`` for bad input); REST 3.0 answers its own exceptions
(api-reference/tasks/tasks-task-*-rest-v3.md). Every change raises ONTASKADD/UPDATE/DELETE with
the data shape of tasks/events-tasks/on-task-*.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import task_model as model
from ..context import CallContext
from ..envelope import Page
from ..errors import PortalError
from ..filters import (
    PAGE_SIZE,
    FilterError,
    compile_filter,
    compile_order,
    compile_v3_filter,
    make_page,
    page_start,
    select_list,
)
from ..registry import method
from ..store import Query
from ..v3 import PREFIX
from .users import find_user, full_name, user_brief, user_exists

TABLE = "tasks"
V3_VALIDATION = PREFIX + "VALIDATION_REQUESTVALIDATIONEXCEPTION"

Apply = Callable[[dict[str, Any]], None]


# --- shared operations ------------------------------------------------------------------------


def _event_data(task_id: int, action: str) -> dict[str, Any]:
    """Data of ONTASKADD / ONTASKUPDATE / ONTASKDELETE as their docs pages show it."""
    fields = {"ID": task_id}
    return {
        "FIELDS_BEFORE": "undefined" if action == "ADD" else fields,
        "FIELDS_AFTER": "undefined" if action == "DELETE" else fields,
        "IS_ACCESSIBLE_BEFORE": "N" if action == "ADD" else "undefined",
        "IS_ACCESSIBLE_AFTER": "N" if action == "DELETE" else "undefined",
    }


def _check(ctx: CallContext, task: dict[str, Any]) -> None:
    store = ctx.portal.store
    model.check_task(
        task,
        lambda user_id: user_exists(store, user_id),
        lambda task_id: store.get(TABLE, task_id) is not None,
    )


def _create(ctx: CallContext, apply: Apply) -> dict[str, Any]:
    store = ctx.portal.store
    now = int(time.time())
    with store.transaction():
        task = model.new_task(ctx.auth.user_id, now)
        apply(task)
        _check(ctx, task)
        model.touch(task, None, ctx.auth.user_id, now)
        task["ID"] = store.insert(TABLE, task)
        ctx.portal.events.emit(ctx, "ONTASKADD", _event_data(task["ID"], "ADD"))
    return task


def _change(ctx: CallContext, task_id: int, apply: Apply) -> dict[str, Any] | None:
    store = ctx.portal.store
    with store.transaction():
        before = store.get(TABLE, task_id)
        if before is None:
            return None
        task = dict(before)
        apply(task)
        _check(ctx, task)
        model.touch(task, before, ctx.auth.user_id, int(time.time()))
        store.put(TABLE, task_id, task)
        ctx.portal.events.emit(ctx, "ONTASKUPDATE", _event_data(task_id, "UPDATE"))
    return task


def _remove(ctx: CallContext, task_id: int) -> bool:
    store = ctx.portal.store
    with store.transaction():
        if not store.delete(TABLE, task_id):
            return False
        ctx.portal.events.emit(ctx, "ONTASKDELETE", _event_data(task_id, "DELETE"))
    return True


# --- v2 -------------------------------------------------------------------------------------


def _task_id(params: dict[str, Any]) -> int:
    raw = next((v for k, v in params.items() if k.lower() == "taskid"), None)
    if raw is None:
        raise PortalError(
            "100", "CTaskItem All parameters in the constructor must have real class type"
        )
    try:
        task_id = int(str(raw).strip())
    except ValueError:
        task_id = 0
    if task_id <= 0:
        raise PortalError("0", "wrong task id")
    return task_id


def _not_allowed() -> PortalError:
    return PortalError("0", "Action on the task is not allowed")


def _v2_fields(params: dict[str, Any], required: bool) -> Any:
    fields = next((v for k, v in params.items() if k.lower() == "fields"), None)
    if required and (not fields or not isinstance(fields, (Mapping, list))):
        raise PortalError("100", "Could not find value for parameter {fields}")
    return fields


def _v2_apply(fields: Any) -> Apply:
    def apply(task: dict[str, Any]) -> None:
        model.apply_v2_fields(task, fields)

    return apply


def _v2_task(ctx: CallContext, task: dict[str, Any], select: list[str] | None = None) -> dict:
    store = ctx.portal.store
    return {"task": model.v2_view(task, select or [], lambda uid: user_brief(store, uid))}


def _core_error(exc: model.TaskInputError) -> PortalError:
    return PortalError("ERROR_CORE", f"{exc.message}<br>")


@method("tasks.task.add", scope="task")
def add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    try:
        task = _create(ctx, _v2_apply(_v2_fields(params, required=True)))
    except model.TaskInputError as exc:
        raise _core_error(exc) from None
    return _v2_task(ctx, task)


@method("tasks.task.get", scope="task")
def get(ctx: CallContext, params: dict[str, Any]) -> Any:
    task = ctx.portal.store.get(TABLE, _task_id(params))
    if task is None:
        return []  # tasks-task-get.md: an empty array when the task does not exist
    return _v2_task(ctx, task, select_list(params.get("select")))


@method("tasks.task.update", scope="task")
def update(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    task_id = _task_id(params)
    try:
        task = _change(ctx, task_id, _v2_apply(_v2_fields(params, required=True)))
    except model.TaskInputError as exc:
        raise _core_error(exc) from None
    if task is None:
        raise _not_allowed()
    return _v2_task(ctx, task)


@method("tasks.task.complete", scope="task")
def complete(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    def finish(task: dict[str, Any]) -> None:
        task["STATUS"] = model.COMPLETED

    task = _change(ctx, _task_id(params), finish)
    if task is None:
        raise _not_allowed()
    return _v2_task(ctx, task)


@method("tasks.task.delete", scope="task")
def delete(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    if not _remove(ctx, _task_id(params)):
        raise PortalError("1048582", "No access to delete the task")
    return {"task": True}


@method("tasks.task.list", scope="task")
def list_(ctx: CallContext, params: dict[str, Any]) -> Page:
    lowered = {k.lower(): v for k, v in params.items()}
    try:
        where, values = compile_filter(lowered.get("filter"), model.v2_column)
        order = compile_order(lowered.get("order") or {"ID": "DESC"}, model.v2_column, strict=True)
    except FilterError as exc:
        if exc.reason == "order":
            raise PortalError("0", "Invalid sorting key") from None
        raise PortalError("ERROR_CORE", f"Invalid filter value for {exc.field}") from None
    offset, counted = page_start(lowered.get("start"))
    query = Query(where, values, order, offset, PAGE_SIZE, counted)
    rows, total = ctx.portal.store.select(TABLE, query)
    select = select_list(lowered.get("select"))
    store = ctx.portal.store
    tasks = [model.v2_view(row, select, lambda uid: user_brief(store, uid)) for row in rows]
    return make_page({"tasks": tasks}, total, offset, counted)


# --- REST 3.0 -------------------------------------------------------------------------------


def _validation(field: str, message: str) -> PortalError:
    return PortalError(
        V3_VALIDATION,
        "Error during request object validation",
        400,
        {"validation": [{"message": message, "field": field}]},
    )


def _v3_id(params: dict[str, Any]) -> int:
    raw = params.get("id")
    if raw is None:
        raise _validation("id", "Required field `id` is missing")
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _validation("id", "Field `id` requires data type `int` for this request")
    return raw


def _v3_fields(params: dict[str, Any]) -> dict[str, Any]:
    fields = params.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise _validation("fields", "Required field `fields` is missing")
    return fields


def _v3_apply(fields: dict[str, Any], creating: bool) -> Apply:
    def apply(task: dict[str, Any]) -> None:
        model.apply_v3_fields(task, fields, creating=creating)

    return apply


def _v3_input_error(exc: model.TaskInputError) -> PortalError:
    names = {
        "TITLE": "title",
        "RESPONSIBLE_ID": "responsibleId",
        "PARENT_ID": "parentId",
        "END_DATE_PLAN": "endPlan",
        "ACCOMPLICES": "accomplices",
    }
    return _validation(names.get(exc.field, exc.field), exc.message)


def _access_denied() -> PortalError:
    return PortalError(PREFIX + "ACCESSDENIEDEXCEPTION", "Access denied", 403)


def _user_dto(ctx: CallContext, user_id: int | None, fields: list[str]) -> dict[str, Any] | None:
    user = find_user(ctx.portal.store, user_id) if user_id else None
    if user is None:
        return None
    values = {
        "id": user["ID"],
        "name": full_name(user),
        "role": "employee",
        "image": None,
        "gender": user.get("PERSONAL_GENDER") or None,
        "email": user.get("EMAIL"),
        "externalAuthId": None,
        "rights": [],
    }
    return {f: values[f] for f in fields}


def _v3_item(ctx: CallContext, task: dict[str, Any], select: list[str] | None) -> dict:
    """A task for REST 3.0, with ``relation.field`` selections turned into nested objects;
    an unknown field of a related object is an error, an unknown own field is left out."""
    if select is None:
        return model.v3_view(task, None)
    own = [s for s in select if "." not in s]
    related: dict[str, list[str]] = {}
    for entry in select:
        relation, dot, field = entry.partition(".")
        if dot and relation in model.RELATIONS:
            related.setdefault(relation, []).append(field)
    item = model.v3_view(task, own)
    for relation, fields in related.items():
        stored, dto, many = model.RELATIONS[relation]
        known = model.USER_DTO_FIELDS if dto == "UserDto" else tuple(model.v3_view(task, None))
        unknown = next((f for f in fields if f not in known), None)
        if unknown is not None:
            raise PortalError(
                PREFIX + "UNKNOWNDTOPROPERTYEXCEPTION",
                f"Unknown field `{unknown}` for entity `{dto}`",
            )
        value = task.get(stored)
        if dto == "TaskDto":
            parent = ctx.portal.store.get(TABLE, value) if value else None
            item[relation] = model.v3_view(parent, fields) if parent else None
        elif many:
            item[relation] = [_user_dto(ctx, uid, fields) for uid in value or []]
        else:
            item[relation] = _user_dto(ctx, value, fields)
    return item


def _v3_select(params: dict[str, Any]) -> list[str] | None:
    select = params.get("select")
    if select is None:
        return None
    if not isinstance(select, list) or not all(isinstance(s, str) for s in select):
        raise _validation("select", "Field `select` requires data type `array` for this request")
    return select


@method("tasks.task.add", scope="tasks", api="v3")
def v3_add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    fields = _v3_fields(params)
    for required in ("title", "creatorId", "responsibleId"):
        if required not in fields:
            raise _validation(required, f"Required field `{required}` is missing")
    try:
        task = _create(ctx, _v3_apply(fields, creating=True))
    except model.TaskInputError as exc:
        raise _v3_input_error(exc) from None
    return {"item": _v3_item(ctx, task, None)}


@method("tasks.task.get", scope="tasks", api="v3")
def v3_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    task_id = _v3_id(params)
    task = ctx.portal.store.get(TABLE, task_id)
    if task is None:
        raise PortalError(
            PREFIX + "ENTITYNOTFOUNDEXCEPTION", f"Record with ID = `{task_id}` not found"
        )
    return {"item": _v3_item(ctx, task, _v3_select(params))}


@method("tasks.task.update", scope="tasks", api="v3")
def v3_update(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    task_id = _v3_id(params)
    fields = _v3_fields(params)
    try:
        task = _change(ctx, task_id, _v3_apply(fields, creating=False))
    except model.TaskInputError as exc:
        raise _v3_input_error(exc) from None
    if task is None:
        raise _access_denied()
    return {"result": True}


@method("tasks.task.delete", scope="tasks", api="v3")
def v3_delete(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    if not _remove(ctx, _v3_id(params)):
        raise _access_denied()
    return {"result": True}


def _pagination(raw: Any) -> tuple[int, int]:
    """(offset, limit) from ``{page, limit, offset}``: limit 1..1000 (default 50). ``page`` 0
    means no page, so ``offset`` counts (the vendor's JS SDK always sends ``page: 0``)."""
    raw = raw if raw is not None else {}
    bad = PortalError(
        PREFIX + "INVALIDPAGINATIONEXCEPTION",
        f"Unable to recognize the pagination parameter `{raw}`",
    )
    if not isinstance(raw, dict):
        raise bad
    values = {}
    for key in ("page", "limit", "offset"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad
        values[key] = value
    limit = values["limit"] if values["limit"] is not None else PAGE_SIZE
    if not 1 <= limit <= 1000 or (values["page"] is not None and values["page"] < 0):
        raise bad
    if values["page"]:
        return (values["page"] - 1) * limit, limit
    return max(values["offset"] or 0, 0), limit


@method("tasks.task.list", scope="tasks", api="v3")
def v3_list(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    try:
        where, values = compile_v3_filter(params.get("filter"), model.v3_column)
        order = compile_order(
            params.get("order") or {"id": "ASC"},
            lambda name: model.v3_column(name, sorting=True),
            strict=True,
        )
    except FilterError as exc:
        raise _v3_filter_error(exc) from None
    offset, limit = _pagination(params.get("pagination"))
    query = Query(where, values, order, offset, limit, count=False)
    rows, _ = ctx.portal.store.select(TABLE, query)
    select = _v3_select(params) or ["id"]
    return {"items": [_v3_item(ctx, row, select) for row in rows]}


def _v3_filter_error(exc: FilterError) -> PortalError:
    if exc.reason == "order":
        return PortalError(
            PREFIX + "INVALIDORDEREXCEPTION", f"Unable to recognize sorting parameter `{exc.field}`"
        )
    if exc.reason == "operator":
        return PortalError(PREFIX + "UNKNOWNFILTEROPERATOREXCEPTION", exc.detail)
    if exc.reason == "field":
        return _validation(
            exc.field,
            f"In DTO `TaskDto`, the `{exc.field}` field requires the `Filterable` attribute "
            "for such a request",
        )
    return _validation(exc.field, exc.detail or "Invalid filter value")
