"""Data a fresh sandbox portal starts with, and the generators behind admin ``seed``.

Seeded rows go straight into SQLite with ``executemany`` (no handlers, no events), so a test can
fill the portal with 100,000 leads in a few seconds. Every generated record is what the method
handlers would have stored for the same input: built with the same model functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from . import crm_fields, crm_model, task_model

__all__ = ["LIST_VIEWS", "SEED_KINDS", "USERS", "message_id", "offline_event"]

#: The portal's people. User 1 is the administrator the webhook and the OAuth app act as;
#: user 5 has left the company (ACTIVE false), so ``user.get`` filters have something to skip.
_REGISTERED = 1_700_000_000
USERS: list[dict[str, Any]] = [
    {
        "ID": user_id,
        "ACTIVE": active,
        "NAME": name,
        "LAST_NAME": last,
        "SECOND_NAME": "",
        "EMAIL": email,
        "LAST_LOGIN": _REGISTERED + 86_400 * user_id,
        "DATE_REGISTER": _REGISTERED,
        "TIME_ZONE": "",
        "IS_ONLINE": "N",
        "PERSONAL_GENDER": gender,
        "PERSONAL_BIRTHDAY": "",
        "WORK_POSITION": position,
        "UF_DEPARTMENT": [1],
        "USER_TYPE": "employee",
    }
    for user_id, active, name, last, email, gender, position in (
        (1, True, "Admin", "", "admin@sandbox.local", "", "Administrator"),
        (2, True, "John", "Smith", "john.smith@sandbox.local", "M", "Sales manager"),
        (3, True, "Maria", "Garcia", "maria.garcia@sandbox.local", "F", "Support engineer"),
        (4, True, "Ken", "Tanaka", "ken.tanaka@sandbox.local", "M", "Developer"),
        (5, False, "Olga", "Petrova", "olga.petrova@sandbox.local", "F", "Accountant"),
    )
]

_NAMES = ("Anna", "Boris", "Chen", "Dana", "Emil", "Fatima", "Gleb", "Hana", "Ivan", "Julia")
_LAST = ("Titov", "Novak", "Li", "Weber", "Silva", "Khan", "Berg", "Sato", "Moreau", "Rossi")
_LEAD_STAGES = ("NEW", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK")
_DEAL_STAGES = ("NEW", "PREPARATION", "PREPAYMENT_INVOICE", "EXECUTING", "WON", "LOSE")
_SOURCES = ("CALL", "EMAIL", "WEB", "ADVERTISING", "PARTNER", "RECOMMENDATION")


def _crm_factory(entity: crm_fields.Entity) -> Callable[[int, list[int]], dict[str, Any]]:
    """Record number ``i`` of ``entity``, assigned round-robin to ``users``."""

    def build(i: int, users: list[int]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "ASSIGNED_BY_ID": users[i % len(users)],
            "COMMENTS": f"Seeded {entity.code} {i}",
        }
        if entity.code in ("lead", "contact"):
            fields.update(NAME=_NAMES[i % 10], LAST_NAME=_LAST[(i // 10) % 10])
        if entity.code != "contact":
            fields["TITLE"] = f"{entity.label} #{i}"
        if entity.code == "lead":
            fields.update(
                STATUS_ID=_LEAD_STAGES[i % 5], SOURCE_ID=_SOURCES[i % 6], OPPORTUNITY=i % 100 * 10
            )
        if entity.code == "deal":
            fields.update(STAGE_ID=_DEAL_STAGES[i % 6], OPPORTUNITY=i % 100 * 100)
        record: dict[str, Any] = {}
        crm_model.apply_fields(entity, record, fields, _no_multi)
        crm_model.finish_record(entity, record, None, 1, int(time.time()) - 86_400 + i % 86_400)
        return record

    return build


def _no_multi() -> int:
    raise RuntimeError("seeded records carry no multi-field values")


def _task(i: int, users: list[int]) -> dict[str, Any]:
    now = int(time.time())
    task = task_model.new_task(1, now)
    task_model.apply_v2_fields(
        task,
        {
            "TITLE": f"Task #{i}",
            "RESPONSIBLE_ID": users[i % len(users)],
            "PRIORITY": i % 3,
            "STATUS": (2, 3, 5)[i % 3],
        },
    )
    task_model.touch(task, None, 1, now)
    return task


#: ``seed`` kinds -> (table, record factory).
SEED_KINDS: dict[str, tuple[str, Callable[[int, list[int]], dict[str, Any]]]] = {
    **{f"crm.{e.code}": (e.table, _crm_factory(e)) for e in crm_fields.ENTITIES.values()},
    "tasks.task": ("tasks", _task),
}


#: Tables whose rows ``seed`` renders ahead in the ``.list`` default view (``Store.render``).
LIST_VIEWS: dict[str, Callable[[dict[str, Any]], Any]] = {
    e.table: crm_model.list_view(e) for e in crm_fields.ENTITIES.values()
}


def message_id(name: str, data: Any) -> str:
    """MESSAGE_ID of an offline event: md5 of the name and its JSON data, so repeated changes of
    one object collapse into one queue row (the vendor's EventOfflineTable::getMessageId)."""
    payload = name + "|" + json.dumps(data, separators=(",", ":"), sort_keys=True)
    return hashlib.md5(payload.encode("utf-8")).hexdigest()


def offline_event(i: int) -> tuple[str, dict[str, Any], str]:
    """Seeded queue row ``i``: an ONCRMLEADUPDATE for lead ``i`` (distinct MESSAGE_IDs)."""
    data = {"FIELDS": {"ID": i}}
    return "ONCRMLEADUPDATE", data, message_id("ONCRMLEADUPDATE", data)
