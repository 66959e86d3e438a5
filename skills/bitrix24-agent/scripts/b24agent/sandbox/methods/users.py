"""Users: ``user.current``, ``user.get`` and ``profile`` (api-reference/user/user-current.md,
user-get.md, common/users/profile.md), over the people seeded in ``fixtures.USERS``.

Other method modules read users through ``find_user`` and ``user_brief`` so a task's
``responsible`` object and ``user.get`` describe a person the same way.
"""

from __future__ import annotations

from typing import Any

from ...encoding import php_map
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import argument_error
from ..filters import (
    PAGE_SIZE,
    Column,
    FilterError,
    compile_filter,
    compile_order,
    json_field,
    make_page,
    page_start,
    select_list,
)
from ..registry import method
from ..store import Query, Store

#: user.get fields and how filters read them.
_KINDS: dict[str, str] = {
    "ACTIVE": "bool",
    "NAME": "text",
    "LAST_NAME": "text",
    "SECOND_NAME": "text",
    "EMAIL": "text",
    "LAST_LOGIN": "datetime",
    "DATE_REGISTER": "datetime",
    "TIME_ZONE": "text",
    "IS_ONLINE": "yn",
    "PERSONAL_GENDER": "text",
    "PERSONAL_BIRTHDAY": "text",
    "WORK_POSITION": "text",
    "UF_DEPARTMENT": "int",
    "USER_TYPE": "text",
}
#: user.get parameters that are not filter fields.
_CONTROL = frozenset(
    {"SORT", "ORDER", "FILTER", "SELECT", "START", "ADMIN_MODE", "IMAGE_RESIZE", "AUTH_CONNECTOR"}
)


def find_user(store: Store, user_id: int) -> dict[str, Any] | None:
    return store.get("users", user_id)


def user_exists(store: Store, user_id: int) -> bool:
    return find_user(store, user_id) is not None


def full_name(user: dict[str, Any]) -> str:
    return " ".join(p for p in (user.get("NAME"), user.get("LAST_NAME")) if p)


def user_brief(store: Store, user_id: int) -> dict[str, Any] | None:
    """The ``creator``/``responsible`` object of a v2 task (tasks/fields.md#user)."""
    user = find_user(store, user_id)
    if user is None:
        return None
    return {
        "id": str(user_id),
        "name": full_name(user),
        "link": f"/company/personal/user/{user_id}/",
        "icon": "/bitrix/images/tasks/default_avatar.png",
        "workPosition": user.get("WORK_POSITION", ""),
    }


def user_view(user: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
    """A user as user.get shows it: string ID, ISO dates, ``select`` with ``*``/``UF_*``."""
    view: dict[str, Any] = {"ID": str(user["ID"])}
    for name in _KINDS:
        value = user.get(name)
        view[name] = iso_datetime(value) if _KINDS[name] == "datetime" and value else value
    if select and "*" not in select:
        wanted = {s.upper() for s in select}
        everything_uf = "UF_*" in wanted
        view = {
            k: v
            for k, v in view.items()
            if k == "ID" or k in wanted or (everything_uf and k.startswith("UF_"))
        }
    return view


def _column(name: str) -> Column | None:
    upper = name.upper()
    if upper == "ID":
        return Column("id", "int")
    kind = _KINDS.get(upper)
    if kind is None:
        return None
    if upper == "UF_DEPARTMENT":
        return Column(json_field(upper), "int", each="j.value")
    return Column(json_field(upper), kind)


@method("user.current", scope="user")
def current(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    user = find_user(ctx.portal.store, ctx.auth.user_id)
    return user_view(user) if user else {}


@method("user.get", scope="user")
def get(ctx: CallContext, params: dict[str, Any]) -> Page:
    upper = {key.upper(): value for key, value in params.items()}
    raw_filter = upper.get("FILTER")
    if raw_filter is None:
        raw_filter = {k: v for k, v in params.items() if k.upper() not in _CONTROL}
    try:
        conditions = php_map(raw_filter)
    except TypeError:
        raise argument_error("FILTER must be an object", "FILTER") from None
    search = conditions.pop("NAME_SEARCH", None)
    try:
        where, values = compile_filter(conditions, _column)
        sort = upper.get("SORT")
        order = compile_order({str(sort): upper.get("ORDER") or "ASC"} if sort else None, _column)
    except FilterError as exc:
        raise argument_error(f"Invalid filter value for {exc.field}", exc.field) from None
    if search:
        like = "%" + str(search).replace("%", "") + "%"
        where += (
            " AND ("
            + " OR ".join(f"{json_field(f)} LIKE ?" for f in ("NAME", "LAST_NAME", "EMAIL"))
            + ")"
        )
        values += [like, like, like]
    offset, counted = page_start(upper.get("START"))
    query = Query(where, values, order, offset, PAGE_SIZE, counted)
    rows, total = ctx.portal.store.select("users", query)
    select = select_list(upper.get("SELECT"))
    return make_page([user_view(row, select) for row in rows], total, offset, counted)


@method("profile", scope="basic")
def profile(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """Basic data of the caller, no scope needed; an inactive user gets an empty object."""
    user = find_user(ctx.portal.store, ctx.auth.user_id)
    if user is None or not user.get("ACTIVE"):
        return {}
    return {
        "ID": str(user["ID"]),
        "ADMIN": ctx.auth.is_admin,
        "NAME": user.get("NAME", ""),
        "LAST_NAME": user.get("LAST_NAME", ""),
        "PERSONAL_GENDER": user.get("PERSONAL_GENDER", ""),
        "TIME_ZONE": user.get("TIME_ZONE", ""),
    }
