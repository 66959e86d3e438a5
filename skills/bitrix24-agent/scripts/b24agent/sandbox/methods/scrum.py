"""Scrum: backlog, sprints, scrum task fields and the sprint kanban
(``tasks.api.scrum.backlog.get``, ``.sprint.add|start|get|list``, ``.task.update|get``,
``.kanban.getStages|addTask``; api-reference/sonet-group/scrum/*).

A scrum is a workgroup with a ``SCRUM_MASTER_ID`` (sonet module). Its backlog and its sprints
share one id space, as they do in the portal, because a scrum task's ``entityId`` may name
either. Starting a sprint gives it the three default kanban stages (New, In Progress, Done) and
puts its tasks in New; a task moved into an active sprint lands in New too. A task's stage is
its ``STAGE_ID``, written through ``tasks.task.update``, so ``tasks.task.get`` shows where it is
and ONTASKUPDATE fires. Errors carry code ``0`` (or ``100`` for a missing parameter) with the
texts of the docs' tables.

The docs page of ``tasks.api.scrum.task.update`` shows an ``{"status", "data", "errors"}`` body;
the sandbox answers ``result: true`` in the usual envelope, as every other ``/rest/`` method does.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime, parse_datetime
from ..envelope import Page
from ..errors import PortalError
from ..filters import select_list
from ..registry import method
from .sonet import find_group

ENTITY, STAGE, TASK = "scrum_entity", "scrum_stage", "scrum_task"
_STATUSES = ("planned", "active", "completed")
_SPRINT_DAYS = 14
#: The stages a started sprint gets: (name, type, colour).
_DEFAULT_STAGES = (
    ("New", "NEW", "00C4FB"),
    ("In Progress", "WORK", "47D1E2"),
    ("Done", "FINISH", "75D900"),
)
_SPRINT_FIELDS = (
    "ID",
    "GROUP_ID",
    "ENTITY_TYPE",
    "NAME",
    "SORT",
    "CREATED_BY",
    "MODIFIED_BY",
    "DATE_START",
    "DATE_END",
    "STATUS",
)


def _error(text: str, code: str = "0") -> PortalError:
    return PortalError(code, text)


def _missing(name: str) -> PortalError:
    return _error(f"Could not find value for parameter {{{name}}}", "100")


def _scrum(ctx: CallContext, group_id: Any) -> dict[str, Any]:
    group = find_group(ctx, group_id)
    if group is None or not group.get("SCRUM_MASTER_ID"):
        raise _error("Access denied")
    return group


def backlog_of(ctx: CallContext, group: dict[str, Any]) -> dict[str, Any]:
    """The scrum's backlog, made the first time it is needed."""
    store = ctx.portal.store
    with store.transaction():
        found = docstore.find(store, ENTITY, GROUP_ID=group["ID"], ENTITY_TYPE="backlog")
        if found:
            return found[0]
        backlog = {
            "GROUP_ID": group["ID"],
            "ENTITY_TYPE": "backlog",
            "CREATED_BY": group["OWNER_ID"],
            "MODIFIED_BY": group["OWNER_ID"],
        }
        return docstore.add(store, ENTITY, backlog)


def _entity(ctx: CallContext, raw: Any, kind: str, missing: str) -> dict[str, Any]:
    entity_id = positive_int(raw)
    entity = docstore.get(ctx.portal.store, ENTITY, entity_id) if entity_id else None
    if entity is None or entity["ENTITY_TYPE"] != kind:
        raise _error(missing)
    return entity


def _when(raw: Any, default: float, name: str) -> int:
    if raw in (None, ""):
        return int(default)
    stamp = positive_int(raw)
    try:
        return stamp if stamp is not None else int(parse_datetime(raw))
    except ValueError:
        raise _error(f"Incorrect {name} format") from None


def _sprint_view(sprint: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": sprint["ID"],
        "groupId": sprint["GROUP_ID"],
        "entityType": "sprint",
        "name": sprint["NAME"],
        "goal": sprint["GOAL"],
        "sort": sprint["SORT"],
        "createdBy": sprint["CREATED_BY"],
        "modifiedBy": sprint["MODIFIED_BY"],
        "dateStart": iso_datetime(sprint["DATE_START"]),
        "dateEnd": iso_datetime(sprint["DATE_END"]),
        "status": sprint["STATUS"],
    }


@method("tasks.api.scrum.backlog.get", scope="task")
def backlog_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    group_id = arg(params, "id")
    if positive_int(group_id) is None:
        raise _error("Group id not found")
    group = find_group(ctx, group_id)
    if group is None or not group.get("SCRUM_MASTER_ID"):
        raise _error("Backlog not found")
    backlog = backlog_of(ctx, group)
    return {
        "id": backlog["ID"],
        "groupId": backlog["GROUP_ID"],
        "createdBy": backlog["CREATED_BY"],
        "modifiedBy": backlog["MODIFIED_BY"],
    }


@method("tasks.api.scrum.sprint.add", scope="task")
def sprint_add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    fields = arg(params, "fields")
    if not isinstance(fields, dict):
        raise _missing("fields")
    group = _scrum(ctx, arg(fields, "groupId"))
    name = str(arg(fields, "name") or "").strip()
    status = str(arg(fields, "status") or "planned").lower()
    if not name or status not in _STATUSES:
        raise _error("Sprint not created")
    start = _when(arg(fields, "dateStart"), time.time(), "dateStart")
    end = _when(arg(fields, "dateEnd"), start + _SPRINT_DAYS * 86400, "dateEnd")
    siblings = docstore.find(ctx.portal.store, ENTITY, GROUP_ID=group["ID"], ENTITY_TYPE="sprint")
    sprint = {
        "GROUP_ID": group["ID"],
        "ENTITY_TYPE": "sprint",
        "NAME": name,
        "GOAL": "",
        "SORT": positive_int(arg(fields, "sort")) or len(siblings) + 1,
        "CREATED_BY": ctx.auth.user_id,
        "MODIFIED_BY": ctx.auth.user_id,
        "DATE_START": start,
        "DATE_END": end,
        "STATUS": status,
    }
    return _sprint_view(docstore.add(ctx.portal.store, ENTITY, sprint))


def _sprint(ctx: CallContext, params: dict[str, Any], name: str = "id") -> dict[str, Any]:
    raw = arg(params, name)
    if raw is None:
        raise _missing(name)
    return _entity(ctx, raw, "sprint", "Sprint not found")


@method("tasks.api.scrum.sprint.get", scope="task")
def sprint_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return _sprint_view(_sprint(ctx, params))


@method("tasks.api.scrum.sprint.list", scope="task")
def sprint_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    conditions = arg(params, "filter")
    sprints = docstore.find(
        ctx.portal.store,
        ENTITY,
        where=lambda e: (
            e["ENTITY_TYPE"] == "sprint" and docstore.matches(e, conditions, _SPRINT_FIELDS)
        ),
    )
    docstore.sort(sprints, arg(params, "order"), _SPRINT_FIELDS)
    views = [_sprint_view(s) for s in sprints]
    wanted = {s.lower().replace("_", "") for s in select_list(arg(params, "select"))} - {"*"}
    if wanted:
        views = [{k: v for k, v in view.items() if k.lower() in wanted} for view in views]
    return docstore.page(views, arg(params, "start"))


def _stages(ctx: CallContext, sprint_id: int) -> list[dict[str, Any]]:
    return docstore.find(ctx.portal.store, STAGE, SPRINT_ID=sprint_id)


def _place(ctx: CallContext, task_id: int, stage_id: int) -> None:
    ctx.call("tasks.task.update", {"taskId": task_id, "fields": {"STAGE_ID": stage_id}})


@method("tasks.api.scrum.sprint.start", scope="task")
def sprint_start(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    store = ctx.portal.store
    with store.transaction():
        sprint = _sprint(ctx, params)
        if sprint["STATUS"] != "planned":
            raise _error("Sprint must be planned")
        sprint.update(STATUS="active", MODIFIED_BY=ctx.auth.user_id)
        docstore.put(store, ENTITY, int(sprint["ID"]), sprint)
        if not _stages(ctx, int(sprint["ID"])):
            for index, (name, kind, color) in enumerate(_DEFAULT_STAGES, start=1):
                stage = {"SPRINT_ID": sprint["ID"], "NAME": name, "SORT": index * 100}
                docstore.add(store, STAGE, stage | {"TYPE": kind, "COLOR": color})
        first = _stages(ctx, int(sprint["ID"]))[0]
        for item in docstore.find(store, TASK, ENTITY_ID=sprint["ID"]):
            _place(ctx, int(item["TASK_ID"]), int(first["ID"]))
    return _sprint_view(sprint)


def _scrum_task(ctx: CallContext, raw: Any) -> tuple[int, dict[str, Any]]:
    """(task id, its scrum group) for a task that belongs to a scrum."""
    task_id = positive_int(raw)
    task = ctx.portal.store.get("tasks", task_id) if task_id else None
    group = find_group(ctx, task.get("GROUP_ID")) if task else None
    if task_id is None or group is None or not group.get("SCRUM_MASTER_ID"):
        raise _error("Task not found")
    return task_id, group


@method("tasks.api.scrum.task.update", scope="task")
def task_update(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Put a scrum task in the backlog or a sprint (the backlog by default), set its story
    points and sort. Epics are not kept by the sandbox, so a non-zero ``epicId`` is refused."""
    task_id, group = _scrum_task(ctx, arg(params, "id"))
    fields = upper_keys(arg(params, "fields"))
    if positive_int(fields.get("EPICID")):
        raise _error("Epic not found")
    store = ctx.portal.store
    with store.transaction():
        existing = docstore.get(store, TASK, task_id)
        item = existing or {
            "TASK_ID": task_id,
            "ENTITY_ID": backlog_of(ctx, group)["ID"],
            "STORY_POINTS": "",
            "SORT": 0,
            "CREATED_BY": ctx.auth.user_id,
        }
        target = docstore.get(
            store, ENTITY, positive_int(fields.get("ENTITYID")) or item["ENTITY_ID"]
        )
        if target is None or target["GROUP_ID"] != group["ID"]:
            raise _error("Item not created")
        moved = existing is None or target["ID"] != existing["ENTITY_ID"]
        item["ENTITY_ID"] = target["ID"]
        if "STORYPOINTS" in fields:
            item["STORY_POINTS"] = str(fields["STORYPOINTS"])
        if "SORT" in fields:
            item["SORT"] = positive_int(fields["SORT"]) or 0
        item["MODIFIED_BY"] = ctx.auth.user_id
        docstore.put(store, TASK, task_id, item)
        if moved:
            active = target["ENTITY_TYPE"] == "sprint" and target["STATUS"] == "active"
            stages = _stages(ctx, int(target["ID"])) if active else []
            _place(ctx, task_id, int(stages[0]["ID"]) if stages else 0)
    return True


@method("tasks.api.scrum.task.get", scope="task")
def task_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    raw = arg(params, "id")
    if raw is None:
        raise _missing("id")
    item = docstore.get(ctx.portal.store, TASK, positive_int(raw) or 0)
    if item is None:
        raise _error("Task not found")
    return {
        "entityId": item["ENTITY_ID"],
        "storyPoints": item["STORY_POINTS"],
        "epicId": 0,
        "sort": item["SORT"],
        "createdBy": item["CREATED_BY"],
        "modifiedBy": item["MODIFIED_BY"],
    }


@method("tasks.api.scrum.kanban.getstages", scope="task")
def kanban_get_stages(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    if arg(params, "sprintId") in (None, ""):
        raise _error("Sprint id not found")
    sprint = _sprint(ctx, params, "sprintId")
    return [
        {
            "id": str(s["ID"]),
            "name": s["NAME"],
            "sort": str(s["SORT"]),
            "type": s["TYPE"],
            "sprintId": str(sprint["ID"]),
            "color": s["COLOR"],
        }
        for s in _stages(ctx, int(sprint["ID"]))
    ]


@method("tasks.api.scrum.kanban.addtask", scope="task")
def kanban_add_task(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Put a task of the sprint's scrum on one of the sprint's stages (it joins the sprint)."""
    for name, label in (
        ("sprintId", "Sprint id"),
        ("taskId", "TaskId id"),
        ("stageId", "StageId id"),
    ):
        if arg(params, name) in (None, ""):
            raise _error(f"{label} not found")
    sprint = _sprint(ctx, params, "sprintId")
    stage_id = positive_int(arg(params, "stageId"))
    if not any(s["ID"] == stage_id for s in _stages(ctx, int(sprint["ID"]))):
        raise _error("Stage not found")
    task_id = positive_int(arg(params, "taskId"))
    task = ctx.portal.store.get("tasks", task_id) if task_id else None
    if task is None or task.get("GROUP_ID") != sprint["GROUP_ID"]:
        raise _error("Task not found. The task must be with GROUP_ID")
    store = ctx.portal.store
    with store.transaction():
        item = docstore.get(store, TASK, int(task["ID"])) or {
            "TASK_ID": task["ID"],
            "STORY_POINTS": "",
            "SORT": 0,
            "CREATED_BY": ctx.auth.user_id,
        }
        item.update(ENTITY_ID=sprint["ID"], MODIFIED_BY=ctx.auth.user_id)
        docstore.put(store, TASK, int(task["ID"]), item)
        _place(ctx, int(task["ID"]), int(stage_id or 0))
    return True
