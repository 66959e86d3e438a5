"""Settling a CRM create whose outcome is unknown, through the record's ``ORIGIN_ID``.

REST v2 has no idempotency header; the only server-side link between a CRM record and an outside
id is ``ORIGIN_ID`` (``originId`` for ``crm.item``). So before sending ``crm.<entity>.add`` or
``crm.item.add`` under an idempotency key, the key's external id is stamped into that field, and
after a timeout or a 5xx a retry looks the id up: found means the first attempt created the
record (answer with its id, send nothing); not found means it did not (send). A value the caller
set in that field is kept and used for the look-up: it already names the record in their system.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import catalog
from .diffing import Reader

__all__ = ["OriginLink", "origin_link"]

#: Entities whose ``.add`` takes ORIGIN_ID (crm-lead-add.md, crm-deal-add.md, ...).
_CRM_ADD = re.compile(r"^crm\.(lead|deal|contact|company)\.add$")
_ITEM_ADD = "crm.item.add"


@dataclass(frozen=True)
class OriginLink:
    """How one CRM create carries an outside id: the field, and the list call that finds it."""

    entity_method: str
    field: str
    aliases: tuple[str, ...]
    item: bool

    def current(self, params: Mapping[str, Any]) -> str | None:
        """The id the caller already put into the field, if any."""
        fields = params.get("fields")
        if not isinstance(fields, Mapping):
            return None
        for name in (self.field, *self.aliases):
            value = fields.get(name)
            if value not in (None, ""):
                return str(value)
        return None

    def stamp(self, params: Mapping[str, Any], external_id: str) -> tuple[dict[str, Any], str]:
        """``params`` with the field set (unless the caller set it) and the id to look up."""
        own = self.current(params)
        if own is not None:
            return dict(params), own
        fields = params.get("fields")
        fields = dict(fields) if isinstance(fields, Mapping) else {}
        fields[self.field] = external_id
        return {**params, "fields": fields}, external_id

    def query(self, params: Mapping[str, Any], origin_id: str) -> tuple[str, dict[str, Any]]:
        """The list call that finds the record carrying ``origin_id``."""
        if self.item:
            filter_ = {"=originId": origin_id}
            return "crm.item.list", {"entityTypeId": params.get("entityTypeId"), "filter": filter_}
        filter_ = {"=ORIGIN_ID": origin_id}
        return f"{self.entity_method}.list", {
            "filter": filter_,
            "select": ["ID"],
            "order": {"ID": "ASC"},
        }

    def answer(self, result: Any) -> dict[str, Any] | None:
        """The answer the create would have given, from ``query``'s result (None: not there)."""
        if self.item:
            items = result.get("items", []) if isinstance(result, Mapping) else []
            found = sorted(items, key=lambda item: int(item.get("id", 0)))
            return {"result": {"item": found[0]}} if found else None
        rows = result if isinstance(result, list) else []
        return {"result": int(rows[0]["ID"])} if rows else None

    def find(
        self, params: Mapping[str, Any], origin_id: str, read: Reader
    ) -> dict[str, Any] | None:
        """The answer the create would have given, if a record carrying ``origin_id`` exists."""
        return self.answer(read(*self.query(params, origin_id)))


def origin_link(method: str) -> OriginLink | None:
    """The ORIGIN_ID link of a CRM create, or None for any other method."""
    name = catalog.normalize(method)
    match = _CRM_ADD.match(name)
    if match:
        return OriginLink(f"crm.{match.group(1)}", "ORIGIN_ID", (), item=False)
    if name == _ITEM_ADD:
        return OriginLink("crm.item", "originId", ("ORIGIN_ID",), item=True)
    return None
