"""CRM reference lists and activities: ``crm.status.list``, ``crm.status.entity.items``
(api-reference/crm/status/*.md) and ``crm.activity.add|list``
(crm/timeline/activities/activity-base/*.md).

The status directory is fixed (crm_directory.json): the stock lead statuses, deal stages of the
default pipeline and sources, with the ids the stock portal gives them, so an agent finds stage
ids the way the chains tell it to. Activities are documents; ``crm.activity.list`` filters, sorts
and pages them like every list method (50 rows, ``total``, ``next``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import docstore
from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime, parse_datetime
from ..envelope import Page
from ..errors import PortalError, argument_error
from ..filters import select_list
from ..registry import method

#: ENTITY_ID -> [[STATUS_ID, NAME, semantics, color], ...] of the stock portal, in SORT order.
_DIRECTORY: dict[str, list[list[str]]] = json.loads(
    Path(__file__).with_name("crm_directory.json").read_text(encoding="utf-8")
)

_SYSTEM = frozenset({"NEW", "CONVERTED", "JUNK", "WON", "LOSE"})
_STATUS_FIELDS = (
    "ID",
    "ENTITY_ID",
    "STATUS_ID",
    "NAME",
    "NAME_INIT",
    "SORT",
    "SYSTEM",
    "CATEGORY_ID",
    "COLOR",
    "SEMANTICS",
    "EXTRA",
)


def _directory() -> list[dict[str, Any]]:
    """Every item as crm.status.list shows it (string ids and sorts; EXTRA on stages only)."""
    items: list[dict[str, Any]] = []
    for entity, statuses in _DIRECTORY.items():
        for index, (status, name, semantics, color) in enumerate(statuses, start=1):
            item: dict[str, Any] = {
                "ID": str(100 * len(items) + 1 + index),
                "ENTITY_ID": entity,
                "STATUS_ID": status,
                "NAME": name,
                "NAME_INIT": name if status in _SYSTEM else "",
                "SORT": str(index * 10),
                "SYSTEM": "Y" if status in _SYSTEM else "N",
                "CATEGORY_ID": None,
                "COLOR": color,
                "SEMANTICS": {"success": "S", "failure": "F"}.get(semantics),
            }
            if semantics:
                item["EXTRA"] = {"SEMANTICS": semantics, "COLOR": color}
            items.append(item)
    return items


_ITEMS = _directory()


def _invalid() -> PortalError:
    return PortalError("Invalid parameters.", "Incorrect parameters passed.")


@method("crm.status.list", scope="crm")
def status_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """Items matching ``filter``, in ``order`` (default SORT); every match on one answer."""
    filter_, order = arg(params, "filter", {}), arg(params, "order", {"SORT": "ASC"})
    if not isinstance(filter_ or {}, (dict, list)) or not isinstance(order or {}, (dict, list)):
        raise _invalid()
    try:
        items = [i for i in _ITEMS if docstore.matches(i, filter_ or {}, _STATUS_FIELDS)]
        docstore.sort(items, order or {"SORT": "ASC"}, _STATUS_FIELDS, _sort_value)
    except PortalError:
        raise _invalid() from None
    return Page([dict(i) for i in items], len(items))


def _sort_value(item: dict[str, Any], name: str) -> Any:
    value = item.get(name)
    return int(value) if name in ("ID", "SORT") and value is not None else value


@method("crm.status.entity.items", scope="crm")
def status_entity_items(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``{NAME, SORT (int), STATUS_ID}`` of one directory, by SORT."""
    entity = arg(params, "entityId")
    items = [i for i in _ITEMS if i["ENTITY_ID"] == entity] if isinstance(entity, str) else []
    if not items:
        raise PortalError(
            "The parameter entityId is not defined or invalid.",
            "The directory ID is not specified or is incorrect.",
        )
    return [{"NAME": i["NAME"], "SORT": int(i["SORT"]), "STATUS_ID": i["STATUS_ID"]} for i in items]


# --- activities -------------------------------------------------------------------------------

ACTIVITY = "crm_activity"
_ACTIVITY_FIELDS = (
    "ID",
    "OWNER_ID",
    "OWNER_TYPE_ID",
    "TYPE_ID",
    "PROVIDER_ID",
    "PROVIDER_TYPE_ID",
    "PROVIDER_GROUP_ID",
    "ASSOCIATED_ENTITY_ID",
    "SUBJECT",
    "CREATED",
    "LAST_UPDATED",
    "START_TIME",
    "END_TIME",
    "DEADLINE",
    "COMPLETED",
    "STATUS",
    "RESPONSIBLE_ID",
    "PRIORITY",
    "NOTIFY_TYPE",
    "NOTIFY_VALUE",
    "DESCRIPTION",
    "DESCRIPTION_TYPE",
    "DIRECTION",
    "LOCATION",
    "SETTINGS",
    "ORIGINATOR_ID",
    "ORIGIN_ID",
    "AUTHOR_ID",
    "EDITOR_ID",
    "PROVIDER_PARAMS",
    "PROVIDER_DATA",
    "RESULT_MARK",
    "RESULT_VALUE",
    "RESULT_SUM",
    "RESULT_CURRENCY_ID",
    "RESULT_STATUS",
    "RESULT_STREAM",
    "RESULT_SOURCE_ID",
    "AUTOCOMPLETE_RULE",
)
#: Returned only when named in ``select`` (crm-activity-list.md).
_ON_REQUEST = ("COMMUNICATIONS", "FILES")
#: TYPE_ID -> (PROVIDER_ID, PROVIDER_TYPE_ID) for the classic types (crm-activity-type).
_PROVIDERS = {"1": ("CRM_MEETING", "MEETING"), "2": ("VOXIMPLANT_CALL", "CALL")}
_PROVIDERS.update({"3": ("CRM_TASKS", "TASK"), "4": ("CRM_EMAIL", "EMAIL")})


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _when(value: Any, default: float) -> str:
    if value in (None, ""):
        return iso_datetime(default)
    try:
        return iso_datetime(parse_datetime(value))
    except ValueError:
        raise argument_error(f"Invalid date {value}", "fields") from None


@method("crm.activity.add", scope="crm")
def activity_add(ctx: CallContext, params: dict[str, Any]) -> int:
    fields = upper_keys(arg(params, "fields"))
    for required in ("OWNER_ID", "OWNER_TYPE_ID", "TYPE_ID", "RESPONSIBLE_ID"):
        if positive_int(fields.get(required)) is None:
            raise argument_error(f"Required field {required} is not specified", required)
    if not fields.get("COMMUNICATIONS"):
        raise argument_error("Required field COMMUNICATIONS is not specified", "COMMUNICATIONS")
    now = time.time()
    type_id = str(positive_int(fields["TYPE_ID"]))
    provider, provider_type = _PROVIDERS.get(type_id, ("CRM_TODO", "TODO"))
    start = _when(fields.get("START_TIME"), now)
    activity = {name: None for name in _ACTIVITY_FIELDS}
    activity.update(
        OWNER_ID=str(positive_int(fields["OWNER_ID"])),
        OWNER_TYPE_ID=str(positive_int(fields["OWNER_TYPE_ID"])),
        TYPE_ID=type_id,
        PROVIDER_ID=provider,
        PROVIDER_TYPE_ID=provider_type,
        ASSOCIATED_ENTITY_ID="0",
        SUBJECT=str(fields.get("SUBJECT") or ""),
        CREATED=iso_datetime(now),
        LAST_UPDATED=iso_datetime(now),
        START_TIME=start,
        END_TIME=_when(fields.get("END_TIME"), now) if fields.get("END_TIME") else start,
        DEADLINE=start,
        COMPLETED="Y" if str(fields.get("COMPLETED") or "N").upper() == "Y" else "N",
        STATUS="2" if str(fields.get("COMPLETED") or "N").upper() == "Y" else "1",
        RESPONSIBLE_ID=str(positive_int(fields["RESPONSIBLE_ID"])),
        PRIORITY=str(fields.get("PRIORITY") or "2"),
        NOTIFY_TYPE="1",
        NOTIFY_VALUE="15",
        DESCRIPTION=str(fields.get("DESCRIPTION") or ""),
        DESCRIPTION_TYPE=str(fields.get("DESCRIPTION_TYPE") or "1"),
        DIRECTION=str(fields.get("DIRECTION") or "0"),
        LOCATION=str(fields.get("LOCATION") or ""),
        SETTINGS=[],
        ORIGINATOR_ID=_text(fields.get("ORIGINATOR_ID")),
        ORIGIN_ID=_text(fields.get("ORIGIN_ID")),
        AUTHOR_ID=str(ctx.auth.user_id),
        EDITOR_ID=str(ctx.auth.user_id),
        PROVIDER_PARAMS=[],
        RESULT_MARK="0",
        RESULT_STATUS="0",
        RESULT_STREAM="0",
        AUTOCOMPLETE_RULE="0",
        COMMUNICATIONS=fields["COMMUNICATIONS"],
        FILES=fields.get("FILES") or [],
    )
    return int(docstore.add(ctx.portal.store, ACTIVITY, activity)["ID"])


@method("crm.activity.list", scope="crm")
def activity_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    allowed = (*_ACTIVITY_FIELDS, *_ON_REQUEST)
    filter_ = arg(params, "filter") or {}
    docs = docstore.find(
        ctx.portal.store, ACTIVITY, lambda d: docstore.matches(d, filter_, allowed)
    )
    docstore.sort(docs, arg(params, "order") or {"START_TIME": "ASC"}, allowed)
    select = select_list(arg(params, "select"))
    wanted = [name.upper() for name in select] if select else None
    rows = []
    for doc in docs:
        shown = [n for n in _ACTIVITY_FIELDS if wanted is None or "*" in wanted or n in wanted]
        shown += [n for n in _ON_REQUEST if wanted is not None and n in wanted]
        rows.append({name: str(doc[name]) if name == "ID" else doc.get(name) for name in shown})
    return docstore.page(rows, arg(params, "start"))
