"""Workgroups and projects: ``sonet_group.create|get`` and the members' ``sonet_group.user.add|
get|update|delete`` (api-reference/sonet-group/sonet-group-*.md, members/*.md).

The creator owns the group (an administrator may name ``OWNER_ID``); a scrum is a project with a
``SCRUM_MASTER_ID`` (the scrum module reads that). Roles are ``A`` owner, ``E`` moderator, ``K``
member; the owner and the scrum master cannot be demoted or removed, which the member methods
answer with an empty list as the docs say. Adding, re-roling and removing members is for
administrators; errors carry the empty code and the texts of the pages' tables.

Scope: the pages' header says ``sonet``, while the scope table (scopes/permissions.md) and the
webhook form name it ``sonet_group``; the sandbox checks ``sonet_group``.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, id_list, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError
from ..registry import method
from .users import find_user

KIND = "sonet_group"
SCOPE = "sonet_group"
OWNER, MODERATOR, MEMBER = "A", "E", "K"
_YN_FIELDS = ("VISIBLE", "OPENED", "CLOSED", "PROJECT")
_FILTERABLE = (
    "ID",
    "NAME",
    "OWNER_ID",
    "ACTIVE",
    "VISIBLE",
    "OPENED",
    "CLOSED",
    "PROJECT",
)


def _empty(text: str) -> PortalError:
    return PortalError("", text)


def find_group(ctx: CallContext, group_id: Any) -> dict[str, Any] | None:
    number = positive_int(group_id)
    return docstore.get(ctx.portal.store, KIND, number) if number else None


def is_member(group: dict[str, Any], user_id: int) -> bool:
    return str(user_id) in group["MEMBERS"]


def _yn(raw: Any, default: str) -> str:
    return "Y" if str(raw if raw is not None else default).upper() in ("Y", "1", "TRUE") else "N"


@method("sonet_group.create", scope=SCOPE)
def create(ctx: CallContext, params: dict[str, Any]) -> int:
    query = upper_keys(params)
    name = str(query.get("NAME") or "").strip()
    if not name:
        raise _empty("Incorrect input data")
    owner = positive_int(query.get("OWNER_ID")) if ctx.auth.is_admin else None
    owner = owner if owner and find_user(ctx.portal.store, owner) else ctx.auth.user_id
    master = positive_int(query.get("SCRUM_MASTER_ID"))
    if master is not None and find_user(ctx.portal.store, master) is None:
        raise _empty("Incorrect input data")
    now = int(time.time())
    group = {
        "NAME": name,
        "DESCRIPTION": query.get("DESCRIPTION"),
        "KEYWORDS": query.get("KEYWORDS"),
        "INITIATE_PERMS": str(query.get("INITIATE_PERMS") or "K"),
        "OWNER_ID": owner,
        "SCRUM_MASTER_ID": master,
        "ACTIVE": "Y",
        "SUBJECT_ID": positive_int(query.get("SUBJECT_ID")) or 1,
        "DATE_CREATE": now,
        "DATE_UPDATE": now,
        "MEMBERS": {str(owner): OWNER},
    }
    for field, default in zip(_YN_FIELDS, ("Y", "N", "N", "N"), strict=True):
        group[field] = _yn(query.get(field), default)
    if master is not None:
        group["PROJECT"] = "Y"
        group["MEMBERS"].setdefault(str(master), MODERATOR)
    return int(docstore.add(ctx.portal.store, KIND, group)["ID"])


def _view(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": str(group["ID"]),
        "SITE_ID": "s1",
        "NAME": group["NAME"],
        "DESCRIPTION": group["DESCRIPTION"],
        "DATE_CREATE": iso_datetime(group["DATE_CREATE"]),
        "DATE_UPDATE": iso_datetime(group["DATE_UPDATE"]),
        "ACTIVE": group["ACTIVE"],
        "VISIBLE": group["VISIBLE"],
        "OPENED": group["OPENED"],
        "CLOSED": group["CLOSED"],
        "SUBJECT_ID": str(group["SUBJECT_ID"]),
        "OWNER_ID": str(group["OWNER_ID"]),
        "KEYWORDS": group["KEYWORDS"],
        "NUMBER_OF_MEMBERS": str(len(group["MEMBERS"])),
        "DATE_ACTIVITY": iso_datetime(group["DATE_UPDATE"]),
        "SUBJECT_NAME": "Workgroups",
        "PROJECT": group["PROJECT"],
        "IS_EXTRANET": "N",
        "SCRUM_MASTER_ID": str(group["SCRUM_MASTER_ID"] or ""),
    }


@method("sonet_group.get", scope=SCOPE)
def get(ctx: CallContext, params: dict[str, Any]) -> Page:
    """Groups the caller can see (visible ones and their own), newest first by default."""
    conditions = upper_keys(arg(params, "FILTER"))
    if positive_int(arg(params, "GROUP_ID")):
        conditions["ID"] = positive_int(arg(params, "GROUP_ID"))
    everything = ctx.auth.is_admin and str(arg(params, "IS_ADMIN") or "").upper() == "Y"

    def visible(group: dict[str, Any]) -> bool:
        allowed = everything or group["VISIBLE"] == "Y" or is_member(group, ctx.auth.user_id)
        return allowed and docstore.matches(group, conditions, _FILTERABLE)

    groups = docstore.find(ctx.portal.store, KIND, where=visible)
    groups.reverse()
    docstore.sort(groups, arg(params, "ORDER"), _FILTERABLE)
    return docstore.page([_view(g) for g in groups], arg(params, "start"))


def _members_change(ctx: CallContext, params: dict[str, Any], denied: str) -> tuple[dict, list]:
    """The group and the user ids a member method works on, after its checks."""
    group_id = arg(params, "GROUP_ID")
    if positive_int(group_id) is None:
        raise _empty("Wrong group ID")
    if not ctx.auth.is_admin:
        raise _empty(denied)
    group = find_group(ctx, group_id)
    if group is None:
        raise _empty("Socialnetwork group not found")
    users = id_list(arg(params, "USER_ID"))
    if not users:
        raise _empty("Wrong user IDs")
    return group, users


def _protected(group: dict[str, Any], user_id: int) -> bool:
    return user_id in (group["OWNER_ID"], group["SCRUM_MASTER_ID"])


def _save(ctx: CallContext, group: dict[str, Any]) -> None:
    group["DATE_UPDATE"] = int(time.time())
    docstore.put(ctx.portal.store, KIND, int(group["ID"]), group)


@method("sonet_group.user.add", scope=SCOPE)
def user_add(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    group, users = _members_change(ctx, params, "No permissions to add users")
    added = [u for u in users if find_user(ctx.portal.store, u) and not is_member(group, u)]
    for user_id in added:
        group["MEMBERS"][str(user_id)] = MEMBER
    _save(ctx, group)
    return [str(u) for u in added]


@method("sonet_group.user.get", scope=SCOPE)
def user_get(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, str]]:
    group_id = arg(params, "ID")
    if positive_int(group_id) is None:
        raise _empty("Wrong socialnetwork group ID")
    group = find_group(ctx, group_id)
    if group is None or not (group["VISIBLE"] == "Y" or is_member(group, ctx.auth.user_id)):
        raise _empty("Socialnetwork group not found")
    return [{"USER_ID": user, "ROLE": role} for user, role in group["MEMBERS"].items()]


@method("sonet_group.user.update", scope=SCOPE)
def user_update(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    role = str(arg(params, "ROLE") or "").upper()
    if role not in (MODERATOR, MEMBER):
        raise _empty("Incorrect role code")
    group, users = _members_change(ctx, params, "No permissions to update users role")
    changed = [u for u in users if is_member(group, u) and u != group["OWNER_ID"]]
    for user_id in changed:
        group["MEMBERS"][str(user_id)] = role
    _save(ctx, group)
    return [str(u) for u in changed]


@method("sonet_group.user.delete", scope=SCOPE)
def user_delete(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    group, users = _members_change(ctx, params, "No permissions to update users role")
    removed = [u for u in users if is_member(group, u) and not _protected(group, u)]
    for user_id in removed:
        del group["MEMBERS"][str(user_id)]
    _save(ctx, group)
    return [str(u) for u in removed]
