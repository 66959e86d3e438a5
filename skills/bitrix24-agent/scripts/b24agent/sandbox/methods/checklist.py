"""Task checklists: ``task.checklistitem.add|get|getlist|update|complete|renew|delete``
(api-reference/tasks/checklist-item/task-checklist-item-*.md).

Items form a tree per task: an item with ``PARENT_ID`` 0 is a checklist (its ``TITLE`` is the
checklist's name), the others hang under one. Without ``PARENT_ID`` an item joins the task's
first checklist, which is created when the task has none. ``MEMBERS`` (``{user: {TYPE: A|U}}``)
gives an item its owners; like the portal, the sandbox also adds them to the task as
accomplices (A) or auditors (U), through ``tasks.task.update`` so the task's own rules and its
ONTASKUPDATE event apply. Errors are the ``ERROR_CORE`` texts the pages list.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..errors import PortalError
from ..registry import method
from .users import find_user

KIND = "checklist_item"
_ROLES = {"A": "ACCOMPLICES", "U": "AUDITORS"}
_ORDERABLE = (
    "ID",
    "PARENT_ID",
    "CREATED_BY",
    "TITLE",
    "SORT_INDEX",
    "IS_COMPLETE",
    "IS_IMPORTANT",
    "TOGGLED_BY",
    "TOGGLED_DATE",
)


def _core(text: str, code: int = 8, kind: str = "ACTION_FAILED_TO_BE_PROCESSED") -> PortalError:
    return PortalError("ERROR_CORE", f"TASKS_ERROR_EXCEPTION_#{code}; {text}; {code}/TE/{kind}<br>")


def _task_id(ctx: CallContext, params: dict[str, Any], method_name: str) -> int:
    task_id = positive_int(arg(params, "TASKID"))
    if task_id is None:
        raise _core(
            f"Param #0 (taskId) for method ctaskchecklistitem::{method_name}() expected to be "
            'of type "integer", but given something else.',
            256,
            "WRONG_ARGUMENTS",
        )
    if ctx.portal.store.get("tasks", task_id) is None:
        raise _core("Action failed")
    return task_id


def _item(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    item_id = positive_int(arg(params, "ITEMID"))
    item = docstore.get(ctx.portal.store, KIND, item_id) if item_id else None
    if item is None:
        raise _core("Action failed")
    return item


def _members(ctx: CallContext, raw: Any) -> dict[str, str]:
    """``{"3": {"TYPE": "A"}}`` -> ``{"3": "A"}`` for users that exist; unknown roles refused."""
    members: dict[str, str] = {}
    for user, spec in upper_keys(raw).items():
        role = str(upper_keys(spec).get("TYPE") or "A").upper()
        user_id = positive_int(user)
        if role not in _ROLES or user_id is None or find_user(ctx.portal.store, user_id) is None:
            raise _core(f"Wrong member {user}")
        members[str(user_id)] = role
    return members


def _add_to_task(ctx: CallContext, task_id: int, members: dict[str, str]) -> None:
    """Members join the task in the same roles (task-checklist-item-add.md)."""
    task = ctx.portal.store.get("tasks", task_id) or {}
    fields: dict[str, list[int]] = {}
    for user, role in members.items():
        current = fields.setdefault(_ROLES[role], list(task.get(_ROLES[role]) or []))
        if int(user) not in current and int(user) != task.get("RESPONSIBLE_ID"):
            current.append(int(user))
    changed = {k: v for k, v in fields.items() if v != list(task.get(k) or [])}
    if changed:
        ctx.call("tasks.task.update", {"taskId": task_id, "fields": changed})


def _root(ctx: CallContext, task_id: int) -> int:
    """The task's first checklist, created when there is none."""
    roots = docstore.find(ctx.portal.store, KIND, TASK_ID=task_id, PARENT_ID=0)
    if roots:
        return int(roots[0]["ID"])
    return int(_store_new(ctx, task_id, {"TITLE": "Checklist 1", "PARENT_ID": 0})["ID"])


def _store_new(ctx: CallContext, task_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    siblings = docstore.find(ctx.portal.store, KIND, TASK_ID=task_id, PARENT_ID=fields["PARENT_ID"])
    item = {
        "TASK_ID": task_id,
        "PARENT_ID": fields["PARENT_ID"],
        "CREATED_BY": ctx.auth.user_id,
        "TITLE": fields["TITLE"],
        "SORT_INDEX": positive_int(fields.get("SORT_INDEX")) or len(siblings),
        "IS_COMPLETE": "N",
        "IS_IMPORTANT": "N",
        "TOGGLED_BY": None,
        "TOGGLED_DATE": None,
        "MEMBERS": {},
    }
    return docstore.add(ctx.portal.store, KIND, item)


def _apply(ctx: CallContext, item: dict[str, Any], fields: dict[str, Any]) -> None:
    """TITLE, SORT_INDEX, IS_COMPLETE, IS_IMPORTANT and MEMBERS (replaced as a whole)."""
    if "TITLE" in fields:
        title = str(fields["TITLE"] or "").strip()
        if not title:
            raise _core("Item name not specified")
        item["TITLE"] = title
    if "SORT_INDEX" in fields:
        item["SORT_INDEX"] = positive_int(fields["SORT_INDEX"]) or 0
    if "IS_IMPORTANT" in fields:
        item["IS_IMPORTANT"] = "Y" if str(fields["IS_IMPORTANT"]).upper() in ("Y", "1") else "N"
    if "IS_COMPLETE" in fields:
        _toggle(ctx, item, str(fields["IS_COMPLETE"]).upper() in ("Y", "1", "TRUE"))
    if "MEMBERS" in fields:
        item["MEMBERS"] = _members(ctx, fields["MEMBERS"])
        _add_to_task(ctx, int(item["TASK_ID"]), item["MEMBERS"])


def _toggle(ctx: CallContext, item: dict[str, Any], complete: bool) -> None:
    flag = "Y" if complete else "N"
    if item["IS_COMPLETE"] != flag:
        item.update(IS_COMPLETE=flag, TOGGLED_BY=ctx.auth.user_id, TOGGLED_DATE=int(time.time()))


def _member_view(ctx: CallContext, user: str, role: str) -> dict[str, Any]:
    person = find_user(ctx.portal.store, int(user)) or {}
    name = " ".join(p for p in (person.get("NAME"), person.get("LAST_NAME")) if p)
    return {
        "ID": user,
        "TYPE": role,
        "NAME": name,
        "PERSONAL_PHOTO": None,
        "PERSONAL_GENDER": person.get("PERSONAL_GENDER", ""),
        "IMAGE": "",
        "IS_COLLABER": False,
    }


def _view(ctx: CallContext, item: dict[str, Any]) -> dict[str, Any]:
    toggled = item["TOGGLED_DATE"]
    return {
        "ID": str(item["ID"]),
        "TASK_ID": str(item["TASK_ID"]),
        "PARENT_ID": str(item["PARENT_ID"]) if item["PARENT_ID"] else 0,
        "CREATED_BY": str(item["CREATED_BY"]),
        "TITLE": item["TITLE"],
        "SORT_INDEX": str(item["SORT_INDEX"]),
        "IS_COMPLETE": item["IS_COMPLETE"],
        "IS_IMPORTANT": item["IS_IMPORTANT"],
        "TOGGLED_BY": str(item["TOGGLED_BY"]) if item["TOGGLED_BY"] else None,
        "TOGGLED_DATE": iso_datetime(toggled) if toggled else "",
        "MEMBERS": [_member_view(ctx, u, r) for u, r in item["MEMBERS"].items()],
        "ATTACHMENTS": [],
    }


def _save(ctx: CallContext, item: dict[str, Any]) -> None:
    docstore.put(ctx.portal.store, KIND, int(item["ID"]), item)


@method("task.checklistitem.add", scope="task")
def add(ctx: CallContext, params: dict[str, Any]) -> int:
    task_id = _task_id(ctx, params, "add")
    fields = upper_keys(arg(params, "FIELDS"))
    if not fields:
        raise _core(
            "Param #1 (arFields) expected by method ctaskchecklistitem::add(), but not given.",
            256,
            "WRONG_ARGUMENTS",
        )
    title = str(fields.get("TITLE") or "").strip()
    if not title:
        raise _core("Item name not specified")
    with ctx.portal.store.transaction():
        parent = positive_int(fields.get("PARENT_ID"))
        if "PARENT_ID" not in fields:
            parent = _root(ctx, task_id)
        elif parent and not docstore.find(ctx.portal.store, KIND, TASK_ID=task_id, ID=parent):
            parent = 0  # an unknown parent starts a new checklist, as the docs say
        item = _store_new(ctx, task_id, {**fields, "TITLE": title, "PARENT_ID": parent or 0})
        _apply(ctx, item, {k: v for k, v in fields.items() if k in ("IS_COMPLETE", "MEMBERS")})
        item["IS_IMPORTANT"] = "Y" if str(fields.get("IS_IMPORTANT", "N")).upper() == "Y" else "N"
        _save(ctx, item)
    return int(item["ID"])


@method("task.checklistitem.get", scope="task")
def get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    _task_id(ctx, params, "get")
    return _view(ctx, _item(ctx, params))


@method("task.checklistitem.getlist", scope="task")
def getlist(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    task_id = _task_id(ctx, params, "getlist")
    items = docstore.find(ctx.portal.store, KIND, TASK_ID=task_id)
    items.sort(key=lambda i: i["ID"], reverse=True)  # the docs' default: ID descending
    docstore.sort(items, arg(params, "ORDER"), _ORDERABLE)
    return [_view(ctx, item) for item in items]


@method("task.checklistitem.update", scope="task")
def update(ctx: CallContext, params: dict[str, Any]) -> None:
    _task_id(ctx, params, "update")
    with ctx.portal.store.transaction():
        item = _item(ctx, params)
        _apply(ctx, item, upper_keys(arg(params, "FIELDS")))
        _save(ctx, item)


def _set_complete(ctx: CallContext, params: dict[str, Any], complete: bool) -> bool:
    with ctx.portal.store.transaction():
        item = _item(ctx, params)
        _toggle(ctx, item, complete)
        _save(ctx, item)
    return True


@method("task.checklistitem.complete", scope="task")
def complete(ctx: CallContext, params: dict[str, Any]) -> bool:
    return _set_complete(ctx, params, True)


@method("task.checklistitem.renew", scope="task")
def renew(ctx: CallContext, params: dict[str, Any]) -> bool:
    return _set_complete(ctx, params, False)


@method("task.checklistitem.delete", scope="task")
def delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    _task_id(ctx, params, "delete")
    with ctx.portal.store.transaction():
        item = _item(ctx, params)
        doomed = [int(item["ID"])]
        for item_id in doomed:  # the item and every item under it
            children = docstore.find(ctx.portal.store, KIND, PARENT_ID=item_id)
            doomed.extend(int(child["ID"]) for child in children)
        for item_id in doomed:
            docstore.remove(ctx.portal.store, KIND, item_id)
    return True
