"""Duplicate search by phone or e-mail: ``crm.duplicate.findbycomm``
(api-reference/crm/duplicates/crm-duplicate-find-by-comm.md).

Leads, contacts and companies whose PHONE or EMAIL multi-field holds one of up to 20 values. As
in the portal, phones compare by their digits without the extension (``+49 30 123-45 ext. 7``
matches ``4930 12345``) and e-mails case-insensitively. Up to 20 ids come back per type, and a
type with 20 hides the later types, as the page's notes describe.
"""

from __future__ import annotations

import re
from typing import Any

from ..args import arg
from ..context import CallContext
from ..crm_fields import ENTITIES
from ..errors import PortalError
from ..registry import method
from ..store import Query

MAX_VALUES = 20
_ORDER = ("LEAD", "CONTACT", "COMPANY")
_EXTENSION = re.compile(r"(ext\.?|доб\.?|#|;|,).*$", re.IGNORECASE)


def _key(kind: str, value: Any) -> str:
    text = str(value or "").strip()
    if kind == "EMAIL":
        return text.lower()
    return re.sub(r"\D", "", _EXTENSION.sub("", text))


@method("crm.duplicate.findbycomm", scope="crm")
def find_by_comm(ctx: CallContext, params: dict[str, Any]) -> dict[str, list[int]]:
    kind = str(arg(params, "type") or "").upper()
    if not kind:
        raise PortalError("Communication type is not defined", "Parameter 'type' is required.")
    if kind not in ("EMAIL", "PHONE"):
        raise PortalError(
            f"Communication type '{kind}' is not supported in current context", "Bad type."
        )
    raw = arg(params, "values")
    values = raw if isinstance(raw, list) else [raw] if raw else []
    wanted = {_key(kind, v) for v in values[:MAX_VALUES]} - {""}
    if not wanted:
        raise PortalError("Communication values is not defined", "Parameter 'values' is required.")
    scope = str(arg(params, "entity_type") or "").upper()
    found: dict[str, list[int]] = {}
    for entity_type in _ORDER if not scope else (scope,):
        entity = ENTITIES.get(entity_type.lower())
        if entity is None:
            continue
        query = Query(f"json_extract(data, '$.HAS_{kind}') = 'Y'", limit=None, count=False)
        rows, _ = ctx.portal.store.select(entity.table, query)
        ids = [
            int(row["ID"])
            for row in rows
            if wanted & {_key(kind, item.get("VALUE")) for item in row.get(kind) or []}
        ][:MAX_VALUES]
        if ids:
            found[entity_type] = ids
        if len(ids) >= MAX_VALUES:
            break
    return found
