"""Calendar events: ``calendar.event.add|getbyid|get|delete``
(api-reference/calendar/calendar-event/calendar-event-*.md).

An event lives in the calendar ``type`` + ``ownerId`` names; its section is found automatically
(one default section per calendar), as the docs' ``auto_detect_section`` does. A meeting
(``is_meeting`` Y) has the caller as host and ``attendees`` as guests (the caller alone when
none are given); ``calendar.event.get`` shows a user every event of their calendar plus the
meetings they are invited to. Dates are read as ISO 8601 with an offset, or as plain dates and
times in ``timezone_from``/``timezone_to`` (the user's zone otherwise) and shown the way the
docs' examples do (``12/11/2024 05:59:00 pm``, ``DATE_FROM_TS_UTC``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import docstore
from ..args import arg, flag, id_list, positive_int
from ..context import CallContext
from ..errors import PortalError
from ..registry import method
from .users import find_user, full_name

KIND = "calendar_event"
_TYPES = ("user", "group", "company_calendar")
_REMIND_UNITS = ("min", "hour", "day")
_SHOWN = "%m/%d/%Y %I:%M:%S %p"


def _required(name: str, method_name: str) -> PortalError:
    return PortalError(
        "", f'The required parameter "{name}" for the method "{method_name}" is not set'
    )


def _zone(name: Any) -> Any:
    if not name:
        return None
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise PortalError("", f'Invalid value for the parameter "timezone" ({name})') from None


def _moment(raw: Any, ts: Any, zone: Any, name: str) -> datetime:
    """An aware datetime from ``from``/``to`` text or the ``*_ts`` unix time."""
    if ts not in (None, ""):
        stamp = positive_int(ts)
        if stamp is None:
            raise PortalError("", f'Invalid value for the parameter "{name}_ts"')
        return datetime.fromtimestamp(stamp, timezone.utc)
    if raw in (None, ""):
        raise _required(name, "calendar.event.add")
    text = str(raw).strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PortalError("", f'Invalid value for the parameter "{name}"') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone) if zone else moment.astimezone()
    return moment


def _reminders(raw: Any) -> list[dict[str, Any]]:
    reminders = []
    for item in raw or []:
        unit = str(arg(item, "type") or "").lower()
        count = positive_int(arg(item, "count"))
        if unit not in _REMIND_UNITS or count is None:
            raise PortalError("", 'Invalid value for the parameter "remind"')
        reminders.append({"type": unit, "count": count})
    return reminders


def _owner(ctx: CallContext, params: dict[str, Any], method_name: str) -> tuple[str, int]:
    cal_type = arg(params, "type")
    if not cal_type:
        raise _required("type", method_name)
    owner = arg(params, "ownerId")
    if owner in (None, ""):
        raise _required("ownerId", method_name)
    owner_id = positive_int(owner) or 0
    if str(cal_type) not in _TYPES:
        raise PortalError("", "Access denied")
    if cal_type == "user" and find_user(ctx.portal.store, owner_id) is None:
        raise PortalError("", "Access denied")
    return str(cal_type), owner_id


@method("calendar.event.add", scope="calendar")
def add(ctx: CallContext, params: dict[str, Any]) -> int:
    cal_type, owner_id = _owner(ctx, params, "calendar.event.add")
    name = str(arg(params, "name") or "").strip()
    if not name:
        raise _required("name", "calendar.event.add")
    zone_from = _zone(arg(params, "timezone_from"))
    zone_to = _zone(arg(params, "timezone_to")) or zone_from
    start = _moment(arg(params, "from"), arg(params, "from_ts"), zone_from, "from")
    end = _moment(arg(params, "to"), arg(params, "to_ts"), zone_to, "to")
    if end < start:
        raise PortalError("", 'Invalid value for the parameter "to"')
    meeting = flag(arg(params, "is_meeting"))
    attendees = [u for u in id_list(arg(params, "attendees")) if find_user(ctx.portal.store, u)]
    crm = arg(params, "crm_fields")
    if crm is not None and not isinstance(crm, list):
        raise PortalError("", "The list of event links to CRM must be an array")
    event = {
        "CAL_TYPE": cal_type,
        "OWNER_ID": owner_id,
        "NAME": name,
        "FROM": start.timestamp(),
        "TO": end.timestamp(),
        "TZ_FROM": str(getattr(start.tzinfo, "key", "") or start.strftime("%z")),
        "TZ_TO": str(getattr(end.tzinfo, "key", "") or end.strftime("%z")),
        "SKIP_TIME": "Y" if flag(arg(params, "skip_time")) else "N",
        "DESCRIPTION": str(arg(params, "description") or ""),
        "LOCATION": str(arg(params, "location") or ""),
        "COLOR": str(arg(params, "color") or ""),
        "ACCESSIBILITY": str(arg(params, "accessibility") or "busy"),
        "IMPORTANCE": str(arg(params, "importance") or "normal"),
        "PRIVATE_EVENT": "Y" if flag(arg(params, "private_event")) else "",
        "IS_MEETING": meeting,
        "MEETING_HOST": ctx.auth.user_id,
        "ATTENDEES": (attendees or [ctx.auth.user_id]) if meeting else [owner_id],
        "REMIND": _reminders(arg(params, "remind")),
        "CRM": [str(c) for c in crm or []],
        "CREATED_BY": ctx.auth.user_id,
        "DATE_CREATE": int(time.time()),
    }
    return int(docstore.add(ctx.portal.store, KIND, event)["ID"])


def _shown(stamp: float, tz_name: str) -> str:
    zone = ZoneInfo(tz_name) if "/" in tz_name else None
    moment = datetime.fromtimestamp(stamp, zone) if zone else datetime.fromtimestamp(stamp)
    return moment.strftime(_SHOWN).lower()


def _view(ctx: CallContext, event: dict[str, Any]) -> dict[str, Any]:
    host = find_user(ctx.portal.store, event["MEETING_HOST"]) or {}
    event_id = str(event["ID"])
    return {
        "ID": event_id,
        "PARENT_ID": event_id,
        "DELETED": "N",
        "CAL_TYPE": event["CAL_TYPE"],
        "OWNER_ID": str(event["OWNER_ID"]),
        "NAME": event["NAME"],
        "DATE_FROM": _shown(event["FROM"], event["TZ_FROM"]),
        "DATE_TO": _shown(event["TO"], event["TZ_TO"]),
        "TZ_FROM": event["TZ_FROM"],
        "TZ_TO": event["TZ_TO"],
        "DATE_FROM_TS_UTC": str(int(event["FROM"])),
        "DATE_TO_TS_UTC": str(int(event["TO"])),
        "DT_SKIP_TIME": event["SKIP_TIME"],
        "DT_LENGTH": int(event["TO"] - event["FROM"]),
        "CREATED_BY": str(event["CREATED_BY"]),
        "DESCRIPTION": event["DESCRIPTION"],
        "PRIVATE_EVENT": event["PRIVATE_EVENT"],
        "ACCESSIBILITY": event["ACCESSIBILITY"],
        "IMPORTANCE": event["IMPORTANCE"],
        "IS_MEETING": event["IS_MEETING"],
        "MEETING_STATUS": "H",
        "MEETING_HOST": str(event["MEETING_HOST"]),
        "MEETING": {"HOST_NAME": full_name(host), "NOTIFY": True, "MEETING_CREATOR": 1},
        "LOCATION": event["LOCATION"],
        "REMIND": event["REMIND"],
        "COLOR": event["COLOR"],
        "ATTENDEES_CODES": [f"U{u}" for u in event["ATTENDEES"]],
        "ATTENDEE_LIST": [
            {"id": u, "entryId": event_id, "status": "H" if u == event["MEETING_HOST"] else "Q"}
            for u in event["ATTENDEES"]
        ],
        "UF_CRM_CAL_EVENT": event["CRM"] or False,
    }


def _event(ctx: CallContext, params: dict[str, Any], method_name: str) -> dict[str, Any]:
    raw = arg(params, "id")
    if raw in (None, ""):
        raise _required("id", method_name)
    event_id = positive_int(raw)
    event = docstore.get(ctx.portal.store, KIND, event_id) if event_id else None
    if event is None:
        raise PortalError("", "Event not found")
    return event


@method("calendar.event.getbyid", scope="calendar")
def getbyid(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return _view(ctx, _event(ctx, params, "calendar.event.getbyid"))


@method("calendar.event.get", scope="calendar")
def get(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Events of one calendar between ``from`` (default a month ago) and ``to`` (default three
    months ahead); a user's calendar also shows the meetings the user is invited to."""
    cal_type, owner_id = _owner(ctx, params, "calendar.event.get")
    now = datetime.now(timezone.utc)
    low, high = arg(params, "from"), arg(params, "to")
    start = _moment(low, None, None, "from") if low else now - timedelta(days=31)
    end = _moment(high, None, None, "to") if high else now + timedelta(days=92)

    def shown(event: dict[str, Any]) -> bool:
        mine = event["CAL_TYPE"] == cal_type and event["OWNER_ID"] == owner_id
        invited = cal_type == "user" and event["IS_MEETING"] and owner_id in event["ATTENDEES"]
        overlaps = event["FROM"] <= end.timestamp() and event["TO"] >= start.timestamp()
        return (mine or invited) and overlaps

    return [_view(ctx, e) for e in docstore.find(ctx.portal.store, KIND, where=shown)]


@method("calendar.event.delete", scope="calendar")
def delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    event = _event(ctx, params, "calendar.event.delete")
    return docstore.remove(ctx.portal.store, KIND, int(event["ID"]))
