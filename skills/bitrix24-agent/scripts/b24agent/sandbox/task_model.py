"""Tasks: one stored record, two APIs that show it differently.

``tasks.task.*`` on ``/rest/`` takes UPPER_CASE input and answers camelCase strings
(``"id": "3711"``, ``"status": "2"``; api-reference/tasks/fields.md). REST 3.0 on ``/rest/api/``
answers typed camelCase with its own names and words (``"creatorId": 1``, ``"status": "pending"``,
``"priority": "average"``; tasks/fields-rest-v3.md). Records are stored with the vendor's UPPER
column names, typed: ints, ``"Y"``/``"N"``, datetimes as unix seconds, id lists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..encoding import php_map
from .crm_fields import snake_to_camel
from .dates import iso_datetime, parse_datetime
from .filters import Column, json_field

__all__ = [
    "STATUS_WORDS",
    "TaskInputError",
    "apply_v2_fields",
    "apply_v3_fields",
    "new_task",
    "v2_column",
    "v2_view",
    "v3_column",
    "v3_view",
]

#: Stored type of every task field: int, text, yn, datetime, ids (int list), texts (str list).
TYPES: dict[str, str] = {
    "TITLE": "text",
    "DESCRIPTION": "text",
    "PRIORITY": "int",
    "STATUS": "int",
    "RESPONSIBLE_ID": "int",
    "CREATED_BY": "int",
    "CREATED_DATE": "datetime",
    "CHANGED_BY": "int",
    "CHANGED_DATE": "datetime",
    "STATUS_CHANGED_BY": "int",
    "STATUS_CHANGED_DATE": "datetime",
    "CLOSED_BY": "int",
    "CLOSED_DATE": "datetime",
    "ACTIVITY_DATE": "datetime",
    "DATE_START": "datetime",
    "DEADLINE": "datetime",
    "START_DATE_PLAN": "datetime",
    "END_DATE_PLAN": "datetime",
    "PARENT_ID": "int",
    "GROUP_ID": "int",
    "STAGE_ID": "int",
    "AUDITORS": "ids",
    "ACCOMPLICES": "ids",
    "TASK_CONTROL": "yn",
    "ALLOW_CHANGE_DEADLINE": "yn",
    "ALLOW_TIME_TRACKING": "yn",
    "MATCH_WORK_TIME": "yn",
    "REPLICATE": "yn",
    "MULTITASK": "yn",
    "ADD_IN_REPORT": "yn",
    "DESCRIPTION_IN_BBCODE": "yn",
    "TIME_ESTIMATE": "int",
    "DURATION_PLAN": "int",
    "DURATION_TYPE": "text",
    "GUID": "text",
    "XML_ID": "text",
    "MARK": "text",
    "SITE_ID": "text",
    "UF_CRM_TASK": "texts",
}

#: Fields a caller may not set through tasks.task.add/update (the portal keeps them).
_SYSTEM = frozenset(
    {
        "CREATED_DATE",
        "CHANGED_BY",
        "CHANGED_DATE",
        "STATUS_CHANGED_BY",
        "STATUS_CHANGED_DATE",
        "CLOSED_BY",
        "CLOSED_DATE",
        "ACTIVITY_DATE",
        "GUID",
        "MULTITASK",
        "DESCRIPTION_IN_BBCODE",
        "SITE_ID",
    }
)

#: v2 ``status``/REAL_STATUS numbers and their REST 3.0 words (fields-rest-v3.md).
STATUS_WORDS = {
    2: "pending",
    3: "in_progress",
    4: "supposedly_completed",
    5: "completed",
    6: "deferred",
    7: "declined",
}
PRIORITY_WORDS = {0: "low", 1: "average", 2: "high"}
COMPLETED = 5


class TaskInputError(ValueError):
    """Input the method refuses; ``field`` names it (v2: ERROR_CORE, v3: validation)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def new_task(user_id: int, now: int) -> dict[str, Any]:
    """The fields a fresh task has before the caller's input is applied."""
    return {
        "PRIORITY": 1,
        "STATUS": 2,
        "CREATED_BY": user_id,
        "CREATED_DATE": now,
        "STATUS_CHANGED_BY": user_id,
        "STATUS_CHANGED_DATE": now,
        "GROUP_ID": 0,
        "STAGE_ID": 0,
        "AUDITORS": [],
        "ACCOMPLICES": [],
        "TASK_CONTROL": "N",
        "ALLOW_CHANGE_DEADLINE": "N",
        "ALLOW_TIME_TRACKING": "N",
        "MATCH_WORK_TIME": "N",
        "REPLICATE": "N",
        "MULTITASK": "N",
        "ADD_IN_REPORT": "N",
        "DESCRIPTION_IN_BBCODE": "Y",
        "TIME_ESTIMATE": 0,
        "DURATION_TYPE": "days",
        "GUID": "{" + str(uuid.uuid4()) + "}",
        "SITE_ID": "s1",
        "DESCRIPTION": "",
    }


# --- input -----------------------------------------------------------------------------------


def _parse(name: str, kind: str, raw: Any) -> Any:
    if kind in ("ids", "texts"):
        if raw is None or raw == "":
            return []
        items = [raw] if isinstance(raw, (str, int)) else list(php_map(raw).values())
        return [int(v) for v in items] if kind == "ids" else [str(v) for v in items]
    if raw is None or raw == "":
        return None if kind != "text" else ""
    if kind == "int":
        if isinstance(raw, bool) or float(str(raw)) != int(float(str(raw))):
            raise ValueError(raw)
        return int(float(str(raw)))
    if kind == "datetime":
        return int(parse_datetime(raw))
    if kind == "yn":
        text = str(raw).strip().upper()
        if raw is True or text in ("Y", "1", "TRUE"):
            return "Y"
        if raw is False or text in ("N", "0", "FALSE"):
            return "N"
        raise ValueError(raw)
    if isinstance(raw, (dict, list)):
        raise ValueError(raw)
    return str(raw)


def apply_v2_fields(task: dict[str, Any], fields: Any) -> None:
    """Write ``tasks.task.add|update`` input (UPPER_CASE keys) into ``task``; unknown keys are
    ignored, values that do not fit raise TaskInputError."""
    try:
        given = php_map(fields)
    except TypeError:
        raise TaskInputError("fields", "Could not find value for parameter {fields}") from None
    for key, raw in given.items():
        name = key.upper()
        if name.startswith("UF_") and name != "UF_CRM_TASK":
            task[name] = raw
            continue
        kind = TYPES.get(name)
        if kind is None or name in _SYSTEM:
            continue
        try:
            task[name] = _parse(name, kind, raw)
        except (ValueError, TypeError):
            raise TaskInputError(name, f"Invalid value of field {name}") from None


#: REST 3.0 input names -> (stored name, expected JSON type label, converter).
_V3_INPUT: dict[str, tuple[str, str]] = {
    "title": ("TITLE", "string"),
    "description": ("DESCRIPTION", "string"),
    "creatorId": ("CREATED_BY", "int"),
    "responsibleId": ("RESPONSIBLE_ID", "int"),
    "deadline": ("DEADLINE", "DateTime"),
    "startPlan": ("START_DATE_PLAN", "DateTime"),
    "endPlan": ("END_DATE_PLAN", "DateTime"),
    "needsControl": ("TASK_CONTROL", "bool"),
    "groupId": ("GROUP_ID", "int"),
    "stageId": ("STAGE_ID", "int"),
    "parentId": ("PARENT_ID", "int"),
    "priority": ("PRIORITY", "priority"),
    "status": ("STATUS", "status"),
    "accomplices": ("ACCOMPLICES", "array"),
    "auditors": ("AUDITORS", "array"),
    "estimatedTime": ("TIME_ESTIMATE", "int"),
    "plannedDuration": ("DURATION_PLAN", "int"),
    "durationType": ("DURATION_TYPE", "string"),
    "replicate": ("REPLICATE", "bool"),
    "allowsChangeDeadline": ("ALLOW_CHANGE_DEADLINE", "bool"),
    "allowsTimeTracking": ("ALLOW_TIME_TRACKING", "bool"),
    "matchesWorkTime": ("MATCH_WORK_TIME", "bool"),
    "xmlId": ("XML_ID", "string"),
    "crmItemIds": ("UF_CRM_TASK", "array"),
}


def _v3_value(label: str, raw: Any) -> Any:
    """A REST 3.0 input value in stored form; ValueError when its JSON type is wrong."""
    if raw is None and label in ("DateTime", "int"):
        return None
    if label == "string" and isinstance(raw, str):
        return raw
    if label == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if label == "DateTime" and isinstance(raw, str):
        return int(parse_datetime(raw))
    if label == "bool" and (isinstance(raw, bool) or raw in ("Y", "N")):
        return "Y" if raw in (True, "Y") else "N"
    if label == "priority" and raw in PRIORITY_WORDS.values():
        return next(k for k, v in PRIORITY_WORDS.items() if v == raw)
    if label == "status" and raw in STATUS_WORDS.values():
        return next(k for k, v in STATUS_WORDS.items() if v == raw)
    if label == "array" and isinstance(raw, list):
        return [int(v) for v in raw] if raw and isinstance(raw[0], int) else [str(v) for v in raw]
    raise ValueError(raw)


def apply_v3_fields(task: dict[str, Any], fields: Mapping[str, Any], *, creating: bool) -> None:
    """Write REST 3.0 ``fields`` into ``task``; TaskInputError names the offending field."""
    for key, raw in fields.items():
        spec = _V3_INPUT.get(key)
        if spec is None:
            continue
        name, label = spec
        if key == "creatorId" and not creating:
            raise TaskInputError(
                key,
                "In DTO `TaskDto`, the field `creatorId` requires the presence of the "
                "`Editable` attribute for such a request",
            )
        try:
            task[name] = _v3_value(label, raw)
        except (ValueError, TypeError):
            raise TaskInputError(
                key, f"Field `{key}` requires data type `{label}` for this request"
            ) from None
        if name == "UF_CRM_TASK":
            task[name] = [str(v) for v in task[name]]


def check_task(
    task: dict[str, Any],
    user_exists: Callable[[int], bool],
    task_exists: Callable[[int], bool],
) -> None:
    """The checks tasks.task.add|update document: title, responsible, status, parent, plan."""
    if not str(task.get("TITLE") or "").strip():
        raise TaskInputError("TITLE", "Task title is not specified")
    responsible = task.get("RESPONSIBLE_ID")
    if not responsible:
        raise TaskInputError("RESPONSIBLE_ID", "Responsible person not specified")
    if not user_exists(responsible):
        raise TaskInputError(
            "RESPONSIBLE_ID", 'User specified in the "Responsible" field not found'
        )
    for member in (*task.get("ACCOMPLICES", []), *task.get("AUDITORS", [])):
        if not user_exists(member):
            raise TaskInputError("ACCOMPLICES", f"User {member} not found")
    if task.get("STATUS") not in STATUS_WORDS:
        raise TaskInputError("STATUS", "Incorrect status")
    if task.get("PRIORITY") not in PRIORITY_WORDS:
        raise TaskInputError("PRIORITY", "Incorrect priority")
    parent = task.get("PARENT_ID")
    if parent and (parent == task.get("ID") or not task_exists(parent)):
        raise TaskInputError("PARENT_ID", 'Task specified in the "Parent Task" field not found')
    start, end = task.get("START_DATE_PLAN"), task.get("END_DATE_PLAN")
    if start and end and end < start:
        raise TaskInputError(
            "END_DATE_PLAN", "The end date in scheduling is earlier than the start date"
        )


def touch(task: dict[str, Any], before: Mapping[str, Any] | None, user_id: int, now: int) -> None:
    """Stamp a change: who and when, status history, closing data."""
    task.update(CHANGED_BY=user_id, CHANGED_DATE=now, ACTIVITY_DATE=now)
    if before is not None and before.get("STATUS") != task.get("STATUS"):
        task.update(STATUS_CHANGED_BY=user_id, STATUS_CHANGED_DATE=now)
    if task.get("STATUS") == COMPLETED:
        if not task.get("CLOSED_DATE"):
            task.update(CLOSED_BY=user_id, CLOSED_DATE=now)
    else:
        task.update(CLOSED_BY=None, CLOSED_DATE=None)


# --- v2 output -------------------------------------------------------------------------------

UserBrief = Callable[[int], "dict[str, Any] | None"]


def _v2_scalar(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        return iso_datetime(value)
    if kind == "ids":
        return [str(v) for v in value]
    if kind == "texts":
        return list(value)
    return str(value)


def v2_view(task: Mapping[str, Any], select: list[str], user: UserBrief) -> dict[str, Any]:
    """``tasks.task.*`` task object: camelCase keys, string values (fields.md). An empty
    ``select`` (or ``*``) gives every stored field plus ``creator``/``responsible``."""
    wanted = [s.upper() for s in select]
    everything = not wanted or "*" in wanted
    names = ["ID", *TYPES] if everything else ["ID", *(w for w in wanted if w in TYPES)]
    view: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        view[snake_to_camel(name)] = (
            str(task["ID"]) if name == "ID" else _v2_scalar(TYPES[name], task.get(name))
        )
    for name in sorted(k for k in task if k.startswith("UF_") and k != "UF_CRM_TASK"):
        if everything or name in wanted:
            view[name] = task[name]
    if everything:
        view.update(
            subordinate="N",
            favorite="N",
            group=[],
            creator=user(task.get("CREATED_BY") or 0) or [],
            responsible=user(task.get("RESPONSIBLE_ID") or 0) or [],
        )
    return view


# --- v3 output -------------------------------------------------------------------------------

#: REST 3.0 scalar fields -> (stored name, converter kind).
_V3_OUTPUT: dict[str, tuple[str, str]] = {
    "id": ("ID", "int"),
    "title": ("TITLE", "text"),
    "description": ("DESCRIPTION", "text"),
    "creatorId": ("CREATED_BY", "int"),
    "created": ("CREATED_DATE", "datetime"),
    "responsibleId": ("RESPONSIBLE_ID", "int"),
    "deadline": ("DEADLINE", "datetime"),
    "needsControl": ("TASK_CONTROL", "bool"),
    "startPlan": ("START_DATE_PLAN", "datetime"),
    "endPlan": ("END_DATE_PLAN", "datetime"),
    "groupId": ("GROUP_ID", "int"),
    "stageId": ("STAGE_ID", "int"),
    "priority": ("PRIORITY", "priority"),
    "status": ("STATUS", "status"),
    "statusChanged": ("STATUS_CHANGED_DATE", "datetime"),
    "parentId": ("PARENT_ID", "int"),
    "plannedDuration": ("DURATION_PLAN", "int0"),
    "durationType": ("DURATION_TYPE", "text"),
    "started": ("DATE_START", "datetime"),
    "estimatedTime": ("TIME_ESTIMATE", "int0"),
    "replicate": ("REPLICATE", "bool"),
    "changed": ("CHANGED_DATE", "datetime"),
    "changedById": ("CHANGED_BY", "int"),
    "statusChangedById": ("STATUS_CHANGED_BY", "int"),
    "closedById": ("CLOSED_BY", "int"),
    "closed": ("CLOSED_DATE", "datetime"),
    "activity": ("ACTIVITY_DATE", "datetime"),
    "guid": ("GUID", "text"),
    "xmlId": ("XML_ID", "text"),
    "mark": ("MARK", "mark"),
    "allowsChangeDeadline": ("ALLOW_CHANGE_DEADLINE", "bool"),
    "allowsTimeTracking": ("ALLOW_TIME_TRACKING", "bool"),
    "matchesWorkTime": ("MATCH_WORK_TIME", "bool"),
    "isMultitask": ("MULTITASK", "bool"),
    "siteId": ("SITE_ID", "text"),
    "crmItemIds": ("UF_CRM_TASK", "list"),
}

#: Fields REST 3.0 returns that the sandbox does not model: constant values.
_V3_CONSTANT: dict[str, Any] = {
    "checklist": [],
    "epicId": None,
    "storyPoints": None,
    "flowId": None,
    "fileIds": None,
    "containsChecklist": False,
    "containsSubTasks": False,
    "containsRelatedTasks": False,
    "containsGanttLinks": False,
    "containsPlacements": False,
    "containsResults": False,
    "numberOfReminders": 0,
    "chatId": None,
    "actualDuration": 0,
}

#: Relations ``select`` can reach with a dot: relation -> (stored id field, DTO name, list?).
RELATIONS: dict[str, tuple[str, str, bool]] = {
    "creator": ("CREATED_BY", "UserDto", False),
    "responsible": ("RESPONSIBLE_ID", "UserDto", False),
    "changedBy": ("CHANGED_BY", "UserDto", False),
    "statusChangedBy": ("STATUS_CHANGED_BY", "UserDto", False),
    "closedBy": ("CLOSED_BY", "UserDto", False),
    "accomplices": ("ACCOMPLICES", "UserDto", True),
    "auditors": ("AUDITORS", "UserDto", True),
    "parent": ("PARENT_ID", "TaskDto", False),
}
USER_DTO_FIELDS = ("id", "name", "role", "image", "gender", "email", "externalAuthId", "rights")


def _v3_scalar(kind: str, value: Any) -> Any:
    if kind == "int0":
        return value or 0
    if kind == "list":
        return list(value or [])
    if kind == "mark":
        return value or "none"
    if value is None:
        return None
    if kind == "datetime":
        return iso_datetime(value)
    if kind == "bool":
        return value == "Y"
    if kind == "priority":
        return PRIORITY_WORDS.get(value)
    if kind == "status":
        return STATUS_WORDS.get(value)
    return value


def v3_view(task: Mapping[str, Any], own: list[str] | None) -> dict[str, Any]:
    """A REST 3.0 task's own fields: ``own`` None is the basic set (every scalar field),
    otherwise only those named; unknown names are left out, as rest-v3.md says."""
    view: dict[str, Any] = {}
    for key, (name, kind) in _V3_OUTPUT.items():
        if own is None or key in own:
            view[key] = task["ID"] if name == "ID" else _v3_scalar(kind, task.get(name))
    for key, value in _V3_CONSTANT.items():
        if own is None or key in own:
            view[key] = value
    if own is None or "link" in own:
        view["link"] = (
            f"/company/personal/user/{task.get('RESPONSIBLE_ID')}/tasks/task/view/{task['ID']}/"
        )
    for key in ("accomplices", "auditors"):
        if own is not None and key in own:
            view[key] = list(task.get(RELATIONS[key][0]) or [])
    return view


# --- filter columns --------------------------------------------------------------------------

_V2_FILTER_ALIASES = {"REAL_STATUS": "STATUS", "ACCOMPLICE": "ACCOMPLICES", "AUDITOR": "AUDITORS"}


def _column(name: str) -> Column | None:
    if name == "ID":
        return Column("id", "int")
    kind = TYPES.get(name)
    if kind is None:
        return None
    expr = json_field(name)
    if kind in ("ids", "texts"):
        return Column(expr, "int" if kind == "ids" else "text", each="j.value")
    if name == "TITLE":
        return Column(expr, "pattern")
    return Column(expr, kind if kind in ("int", "datetime", "yn") else "text")


def v2_column(name: str) -> Column | None:
    """tasks.task.list filter/order field (REAL_STATUS, ACCOMPLICE, AUDITOR included)."""
    upper = name.upper()
    return _column(_V2_FILTER_ALIASES.get(upper, upper))


#: REST 3.0 sortable fields (tasks-task-list-rest-v3.md); only ``id`` is filterable there.
V3_SORTABLE = (
    "id",
    "title",
    "creatorId",
    "created",
    "responsibleId",
    "deadline",
    "startPlan",
    "endPlan",
    "groupId",
    "priority",
    "status",
    "started",
    "estimatedTime",
    "changed",
    "closed",
    "activity",
    "mark",
    "allowsChangeDeadline",
    "allowsTimeTracking",
)


def v3_column(name: str, *, sorting: bool = False) -> Column | None:
    """REST 3.0 filter column (``id`` only) or, with ``sorting``, order column."""
    if name == "id":
        return Column("id", "int")
    if not sorting or name not in V3_SORTABLE:
        return None
    return _column(_V3_OUTPUT[name][0])
