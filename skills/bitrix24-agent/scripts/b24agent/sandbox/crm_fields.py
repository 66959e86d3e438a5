"""CRM leads, deals, contacts and companies: which fields they have and what each is called.

Field lists follow api-reference/crm/*/crm-*-get.md and crm/universal/object-fields.md. Every
field has its UPPER_CASE name (the old ``crm.lead.*`` methods) and, where ``crm.item.*`` shows
it, a camelCase name; a few are renamed there (``STATUS_ID`` -> ``stageId``, ``DATE_CREATE`` ->
``createdTime``, ``MODIFY_BY_ID`` -> ``updatedBy``). ``crm_model`` turns values in and out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENTITIES",
    "ENTITY_BY_TYPE_ID",
    "INT_TYPES",
    "MULTI_FIELDS",
    "Entity",
    "Field",
    "camel_to_upper",
    "defaults",
    "item_fields_description",
    "snake_to_camel",
    "v2_fields_description",
]

INT_TYPES = frozenset(
    {"integer", "user", "crm_company", "crm_contact", "crm_lead", "crm_quote", "crm_category"}
)
MULTI_FIELDS = ("PHONE", "EMAIL", "WEB", "IM", "LINK")


@dataclass(frozen=True)
class Field:
    """One field. ``camel`` is its crm.item name ("" when crm.item does not show it);
    ``in_star`` is False for fields ``select: ["*"]`` leaves out (multi-fields, id lists)."""

    name: str
    type: str
    title: str
    camel: str = ""
    read_only: bool = False
    multiple: bool = False
    status_type: str | None = None
    in_star: bool = True


@dataclass(frozen=True)
class Entity:
    """A CRM entity type: ``code`` (lead), ``type_id`` (1, the crm.item entityTypeId), table."""

    code: str
    type_id: int
    label: str
    fields: tuple[Field, ...]
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)
    by_camel: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "by_camel", {f.camel: f for f in self.fields if f.camel})

    @property
    def table(self) -> str:
        return f"crm_{self.code}"

    def event(self, action: str) -> str:
        """``ONCRMLEADADD`` and friends."""
        return f"ONCRM{self.code.upper()}{action}"

    @property
    def has_multi(self) -> bool:
        return "PHONE" in self.by_name


# --- field tables -----------------------------------------------------------------------------


def snake_to_camel(name: str) -> str:
    head, *rest = name.lower().split("_")
    return head + "".join(part.capitalize() for part in rest)


def camel_to_upper(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).upper()


def _f(name: str, type_: str, title: str, camel: str | None = None, **flags: Any) -> Field:
    """A field whose crm.item name is its camelCase form unless given (``""`` for none)."""
    return Field(name, type_, title, snake_to_camel(name) if camel is None else camel, **flags)


_SYSTEM = (
    _f("ID", "integer", "ID", "id", read_only=True),
    _f("ASSIGNED_BY_ID", "user", "Responsible"),
    _f("CREATED_BY_ID", "user", "Created by", "createdBy", read_only=True),
    _f("MODIFY_BY_ID", "user", "Modified by", "updatedBy", read_only=True),
    _f("DATE_CREATE", "datetime", "Created on", "createdTime", read_only=True),
    _f("DATE_MODIFY", "datetime", "Modified on", "updatedTime", read_only=True),
    _f("OPENED", "char", "Available to everyone"),
    _f("COMMENTS", "string", "Comment"),
    _f("ORIGINATOR_ID", "string", "External source"),
    _f("ORIGIN_ID", "string", "Item ID in data source"),
    _f("LAST_ACTIVITY_BY", "user", "Last activity by", "lastActivityBy", read_only=True),
    _f("LAST_ACTIVITY_TIME", "datetime", "Last activity", read_only=True),
    *(
        _f(f"UTM_{part}", "string", f"UTM {part.lower()}")
        for part in ("SOURCE", "MEDIUM", "CAMPAIGN", "CONTENT", "TERM")
    ),
)

_ADDRESS = tuple(
    _f(f"ADDRESS{suffix}", "string", f"Address{suffix.replace('_', ' ').lower()}", "")
    for suffix in (
        "",
        "_2",
        "_CITY",
        "_POSTAL_CODE",
        "_REGION",
        "_PROVINCE",
        "_COUNTRY",
        "_COUNTRY_CODE",
        "_LOC_ADDR_ID",
    )
)

_COMMUNICATIONS = (
    _f("HAS_PHONE", "char", "Has phone", read_only=True),
    _f("HAS_EMAIL", "char", "Has email", read_only=True),
    _f("HAS_IMOL", "char", "Has Open Channel", read_only=True),
    *(
        _f(name, "crm_multifield", name.capitalize(), "", multiple=True, in_star=False)
        for name in MULTI_FIELDS
    ),
)

_PERSON = (
    _f("HONORIFIC", "crm_status", "Salutation", status_type="HONORIFIC"),
    _f("NAME", "string", "First name"),
    _f("SECOND_NAME", "string", "Middle name"),
    _f("LAST_NAME", "string", "Last name"),
    _f("BIRTHDATE", "date", "Date of birth"),
    _f("POST", "string", "Position"),
)

_MONEY = (
    _f("CURRENCY_ID", "crm_currency", "Currency"),
    _f("OPPORTUNITY", "double", "Amount"),
    _f("IS_MANUAL_OPPORTUNITY", "char", "Manual amount"),
)

_SOURCE = (
    _f("SOURCE_ID", "crm_status", "Source", status_type="SOURCE"),
    _f("SOURCE_DESCRIPTION", "string", "Source information"),
)

_MOVED = (
    _f("MOVED_BY_ID", "user", "Stage changed by", "movedBy", read_only=True),
    _f("MOVED_TIME", "datetime", "Stage changed on", read_only=True),
)

LEAD = Entity(
    "lead",
    1,
    "Lead",
    (
        *_SYSTEM,
        _f("TITLE", "string", "Lead name"),
        *_PERSON,
        _f("COMPANY_TITLE", "string", "Company name"),
        _f("COMPANY_ID", "crm_company", "Company"),
        _f("CONTACT_ID", "crm_contact", "Contact"),
        _f("CONTACT_IDS", "crm_contact", "Contacts", multiple=True, in_star=False),
        _f("IS_RETURN_CUSTOMER", "char", "Repeat lead", read_only=True),
        *_SOURCE,
        _f("STATUS_ID", "crm_status", "Stage", "stageId", status_type="STATUS"),
        _f("STATUS_DESCRIPTION", "string", "Stage information"),
        _f("STATUS_SEMANTIC_ID", "string", "Status semantic", "stageSemanticId", read_only=True),
        *_MONEY,
        _f("DATE_CLOSED", "datetime", "Closed on", read_only=True),
        *_MOVED,
        *_ADDRESS,
        *_COMMUNICATIONS,
    ),
)

DEAL = Entity(
    "deal",
    2,
    "Deal",
    (
        *_SYSTEM,
        _f("TITLE", "string", "Name"),
        _f("TYPE_ID", "crm_status", "Type", status_type="DEAL_TYPE"),
        _f("CATEGORY_ID", "crm_category", "Pipeline"),
        _f("STAGE_ID", "crm_status", "Deal stage", status_type="DEAL_STAGE"),
        _f("STAGE_SEMANTIC_ID", "string", "Stage group", read_only=True),
        _f("IS_NEW", "char", "New deal", read_only=True),
        _f("IS_RECURRING", "char", "Recurring deal"),
        _f("IS_RETURN_CUSTOMER", "char", "Repeat deal", read_only=True),
        _f("IS_REPEATED_APPROACH", "char", "Repeat inquiry", read_only=True),
        _f("PROBABILITY", "integer", "Probability"),
        *_MONEY,
        _f("TAX_VALUE", "double", "Tax rate"),
        _f("COMPANY_ID", "crm_company", "Company"),
        _f("CONTACT_ID", "crm_contact", "Contact"),
        _f("CONTACT_IDS", "crm_contact", "Contacts", multiple=True, in_star=False),
        _f("QUOTE_ID", "crm_quote", "Estimate"),
        _f("LEAD_ID", "crm_lead", "Lead"),
        _f("BEGINDATE", "date", "Start date"),
        _f("CLOSEDATE", "date", "End date"),
        _f("CLOSED", "char", "Closed"),
        _f("ADDITIONAL_INFO", "string", "Additional information"),
        _f("LOCATION_ID", "string", "Location"),
        *_SOURCE,
        *_MOVED,
    ),
)

CONTACT = Entity(
    "contact",
    3,
    "Contact",
    (
        *_SYSTEM,
        *_PERSON,
        _f("PHOTO", "file", "Photo", read_only=True),
        _f("TYPE_ID", "crm_status", "Contact type", status_type="CONTACT_TYPE"),
        *_SOURCE,
        _f("COMPANY_ID", "crm_company", "Company"),
        _f("COMPANY_IDS", "crm_company", "Companies", multiple=True, in_star=False),
        _f("LEAD_ID", "crm_lead", "Lead"),
        _f("EXPORT", "char", "Included in export"),
        _f("ORIGIN_VERSION", "string", "Original version"),
        _f("FACE_ID", "integer", "Face ID", "", read_only=True),
        *_ADDRESS,
        *_COMMUNICATIONS,
    ),
)

COMPANY = Entity(
    "company",
    4,
    "Company",
    (
        *_SYSTEM,
        _f("TITLE", "string", "Company name"),
        _f("COMPANY_TYPE", "crm_status", "Company type", "typeId", status_type="COMPANY_TYPE"),
        _f("LOGO", "file", "Logo", read_only=True),
        _f("INDUSTRY", "crm_status", "Industry", status_type="INDUSTRY"),
        _f("REVENUE", "double", "Annual revenue"),
        _f("CURRENCY_ID", "crm_currency", "Currency"),
        _f("EMPLOYEES", "crm_status", "Employees", status_type="EMPLOYEES"),
        _f("BANKING_DETAILS", "string", "Payment details"),
        _f("IS_MY_COMPANY", "char", "My company"),
        _f("LEAD_ID", "crm_lead", "Lead"),
        _f("CONTACT_ID", "crm_contact", "Contacts", "contactIds", multiple=True, in_star=False),
        _f("ORIGIN_VERSION", "string", "Original version"),
        *_ADDRESS,
        _f("ADDRESS_LEGAL", "string", "Legal address", ""),
        *_COMMUNICATIONS,
    ),
)

ENTITIES: dict[str, Entity] = {e.code: e for e in (LEAD, DEAL, CONTACT, COMPANY)}
ENTITY_BY_TYPE_ID: dict[int, Entity] = {e.type_id: e for e in ENTITIES.values()}

#: Values crm.item.add docs and crm.*.add docs name as defaults (the first stage, source...).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "lead": {
        "STATUS_ID": "NEW",
        "SOURCE_ID": "CALL",
        "CURRENCY_ID": "USD",
        "OPPORTUNITY": 0.0,
        "IS_MANUAL_OPPORTUNITY": "N",
    },
    "deal": {
        "CATEGORY_ID": 0,
        "STAGE_ID": "NEW",
        "TYPE_ID": "SALE",
        "CURRENCY_ID": "USD",
        "OPPORTUNITY": 0.0,
        "TAX_VALUE": 0.0,
        "IS_MANUAL_OPPORTUNITY": "N",
        "IS_RECURRING": "N",
        "IS_REPEATED_APPROACH": "N",
    },
    "contact": {"TYPE_ID": "CLIENT", "EXPORT": "Y"},
    "company": {"COMPANY_TYPE": "CUSTOMER", "CURRENCY_ID": "USD", "IS_MY_COMPANY": "N"},
}


def defaults(entity: Entity) -> dict[str, Any]:
    """Values a new record of ``entity`` starts with."""
    return dict(_DEFAULTS[entity.code])


def _description(fld: Field) -> dict[str, Any]:
    described: dict[str, Any] = {
        "type": fld.type,
        "isRequired": False,
        "isReadOnly": fld.read_only,
        "isImmutable": False,
        "isMultiple": fld.multiple,
        "isDynamic": False,
        "title": fld.title,
    }
    if fld.status_type:
        described["statusType"] = fld.status_type
    return described


def v2_fields_description(entity: Entity) -> dict[str, Any]:
    """``crm.<entity>.fields``: UPPER name -> type, flags and title (crm-lead-fields.md)."""
    return {f.name: _description(f) for f in entity.fields}


def item_fields_description(entity: Entity) -> dict[str, Any]:
    """``crm.item.fields``: ``{"fields": {camelName: {..., "upperName"}}}`` (crm-item-fields.md)."""
    return {
        "fields": {
            f.camel: {**_description(f), "upperName": camel_to_upper(f.camel)}
            for f in entity.fields
            if f.camel
        }
    }
