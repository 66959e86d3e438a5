"""Deal-contact links: ``crm.deal.contact.add|delete`` and ``crm.deal.contact.items.get|set|
delete`` (api-reference/crm/deals/contacts/crm-deal-contact-*.md).

The links are the deal's own ``CONTACT_IDS`` in order, the primary one first (which is also
``CONTACT_ID``), so ``crm.deal.get`` and these methods never disagree. Every change is written
through ``crm.deal.update``: the deal's derived fields, its modification stamp and its
ONCRMDEALUPDATE event follow as for any other edit. ``SORT`` is shown as the position
(``(i + 1) * 10``, the docs' default) and, when given, decides where a new link goes.
"""

from __future__ import annotations

from typing import Any

from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..errors import PortalError
from ..registry import method

_DEAL, _CONTACT = "crm_deal", "crm_contact"


def _empty(text: str) -> PortalError:
    return PortalError("", text)


def _links(ctx: CallContext, params: dict[str, Any]) -> tuple[int, list[int]]:
    deal_id = positive_int(arg(params, "id"))
    if deal_id is None:
        raise _empty("The parameter 'ownerEntityID' is invalid or not defined.")
    deal = ctx.portal.store.get(_DEAL, deal_id)
    if deal is None:
        raise _empty("Not found.")
    return deal_id, [int(c) for c in deal.get("CONTACT_IDS") or []]


def _contact(ctx: CallContext, raw: Any) -> int:
    contact_id = positive_int(raw)
    if contact_id is None or ctx.portal.store.get(_CONTACT, contact_id) is None:
        raise _empty("The parameter 'fields' is not valid.")
    return contact_id


def _fields(params: dict[str, Any]) -> dict[str, Any]:
    fields = arg(params, "fields")
    if not isinstance(fields, dict):
        raise _empty("The parameter 'fields' must be array.")
    return upper_keys(fields)


def _write(ctx: CallContext, deal_id: int, contacts: list[int]) -> None:
    ctx.call("crm.deal.update", {"id": deal_id, "fields": {"CONTACT_IDS": contacts}})


def _primary(raw: Any) -> bool | None:
    if raw in (None, ""):
        return None
    return str(raw).upper() == "Y"


@method("crm.deal.contact.add", scope="crm")
def add(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Link a contact; false when it is linked already. It becomes primary when asked to or when
    the deal has no contact yet; otherwise ``SORT`` places it (last without one)."""
    deal_id, contacts = _links(ctx, params)
    fields = _fields(params)
    contact_id = _contact(ctx, fields.get("CONTACT_ID"))
    if contact_id in contacts:
        return False
    if _primary(fields.get("IS_PRIMARY")) or not contacts:
        position = 0
    else:
        sort = positive_int(fields.get("SORT"))
        position = len(contacts) if sort is None else max(1, min(sort // 10 - 1, len(contacts)))
    contacts.insert(position, contact_id)
    _write(ctx, deal_id, contacts)
    return True


@method("crm.deal.contact.delete", scope="crm")
def delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Unlink a contact (the next one becomes primary); false when it was not linked."""
    deal_id, contacts = _links(ctx, params)
    contact_id = positive_int(_fields(params).get("CONTACT_ID"))
    if contact_id is None:
        raise _empty("The parameter 'fields' is not valid.")
    if contact_id not in contacts:
        return False
    contacts.remove(contact_id)
    _write(ctx, deal_id, contacts)
    return True


@method("crm.deal.contact.items.get", scope="crm")
def items_get(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    _, contacts = _links(ctx, params)
    return [
        {"CONTACT_ID": c, "SORT": (i + 1) * 10, "ROLE_ID": 0, "IS_PRIMARY": "Y" if i == 0 else "N"}
        for i, c in enumerate(contacts)
    ]


@method("crm.deal.contact.items.set", scope="crm")
def items_set(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Replace the links with ``items``: the first ``IS_PRIMARY: Y`` item is primary (the first
    item when none is), the rest keep ``SORT`` order (their position without one)."""
    deal_id, _ = _links(ctx, params)
    items = arg(params, "items")
    if not isinstance(items, list):
        raise _empty("The parameter items must be array.")
    ranked: list[tuple[int, int]] = []
    primary: int | None = None
    for index, raw in enumerate(items):
        item = upper_keys(raw)
        contact_id = _contact(ctx, item.get("CONTACT_ID"))
        if primary is None and _primary(item.get("IS_PRIMARY")):
            primary = contact_id
        ranked.append((positive_int(item.get("SORT")) or (index + 1) * 10, contact_id))
    ordered = list(dict.fromkeys(c for _, c in sorted(ranked, key=lambda pair: pair[0])))
    if primary is None and ranked:
        primary = ranked[0][1]
    if primary is not None:
        ordered.remove(primary)
        ordered.insert(0, primary)
    _write(ctx, deal_id, ordered)
    return True


@method("crm.deal.contact.items.delete", scope="crm")
def items_delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    deal_id, _ = _links(ctx, params)
    _write(ctx, deal_id, [])
    return True
