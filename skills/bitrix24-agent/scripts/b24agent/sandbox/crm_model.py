"""CRM values in and out: one stored record, the two ways Bitrix24 shows it.

The old methods (``crm.lead.get``) speak UPPER_CASE keys with every value a string
(``"ID": "12"``, ``"OPPORTUNITY": "15000.00"``, ``""`` for an empty date); ``crm.item.*`` speaks
camelCase with typed values (``"id": 12``, ``"opportunity": 15000.0``) and ``fm`` for
multi-fields. Which fields exist is ``crm_fields``; this module converts input, derives the
fields Bitrix24 computes itself, renders both views and tells filters how to read each field.

Records are stored typed and sparse: ints, floats, ``"Y"``/``"N"``, dates as ``YYYY-MM-DD``,
datetimes as unix seconds, multi-fields (PHONE, EMAIL, ...) as lists of
``{ID, VALUE_TYPE, VALUE, TYPE_ID}``; absent keys read as null.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from ..encoding import php_map
from .crm_fields import (
    INT_TYPES,
    MULTI_FIELDS,
    Entity,
    Field,
    camel_to_upper,
    defaults,
    snake_to_camel,
)
from .dates import iso_date, iso_datetime, parse_datetime
from .filters import Column, json_field

__all__ = [
    "FieldValueError",
    "apply_fields",
    "finish_record",
    "is_star",
    "item_column",
    "item_view",
    "list_view",
    "v2_column",
    "v2_view",
]


class FieldValueError(ValueError):
    """A value that does not fit its field (crm.item answers CRM_FIELD_ERROR_VALUE_NOT_VALID)."""

    def __init__(self, name: str) -> None:
        super().__init__(f'Invalid value for field "{name}"')
        self.field = name


# --- values in -------------------------------------------------------------------------------


def _blank(raw: Any) -> bool:
    return raw is None or raw == "" or raw == [] or raw == {}


def _to_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(raw)
    number = float(str(raw).strip())
    if number != int(number):
        raise ValueError(raw)
    return int(number)


def _to_yn(raw: Any) -> str:
    text = str(raw).strip().upper()
    if raw is True or text in ("Y", "1", "TRUE"):
        return "Y"
    if raw is False or text in ("N", "0", "FALSE", ""):
        return "N"
    raise ValueError(raw)


def _parse(fld: Field, raw: Any) -> Any:
    """``raw`` (JSON or form text) in the stored type; ValueError if it does not fit."""
    if fld.multiple:
        if _blank(raw):
            return []
        items = [raw] if isinstance(raw, (str, int)) else list(php_map(raw).values())
        return [_to_int(v) for v in items if not _blank(v)]
    if _blank(raw) and fld.type != "char":
        return None
    if fld.type in INT_TYPES:
        number = _to_int(raw)
        # A link field set to 0 means "no link", as in the vendor's COMPANY_ID = 0.
        return number if fld.type == "integer" or number else None
    if fld.type == "double":
        return float(str(raw).strip())
    if fld.type == "char":
        return _to_yn(raw)
    if fld.type == "datetime":
        return int(parse_datetime(raw))
    if fld.type == "date":
        return date.fromtimestamp(parse_datetime(raw)).isoformat()
    if isinstance(raw, (dict, list)):
        raise ValueError(raw)
    return str(raw)


def _merge_multi(
    existing: list[dict[str, Any]], incoming: Any, type_id: str, next_id: Callable[[], int]
) -> list[dict[str, Any]]:
    """Apply multi-field input: an item with a known ID updates it (or, with an empty VALUE or
    ``DELETE: Y``, removes it); an item without one is added (crm_multifield, data-types.md)."""
    result = [dict(item) for item in existing]
    try:
        items = list(php_map(incoming).values())
    except TypeError:
        raise FieldValueError(type_id) from None
    for item in items:
        if not isinstance(item, Mapping):
            raise FieldValueError(type_id)
        value = str(item.get("VALUE") or "").strip()
        value_type = str(item.get("VALUE_TYPE") or "WORK")
        known = next((r for r in result if str(r["ID"]) == str(item.get("ID", ""))), None)
        if known is not None:
            if not value or _to_yn(item.get("DELETE", "N")) == "Y":
                result.remove(known)
            else:
                known.update(VALUE=value, VALUE_TYPE=value_type)
        elif value:
            result.append(
                {"ID": next_id(), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": type_id}
            )
    return result


def uf_to_camel(name: str) -> str:
    """``UF_CRM_1721244707107`` -> ``ufCrm_1721244707107``; ``UF_CRM_2_163`` -> ``ufCrm2_163``
    (the examples in crm-item-add.md); other UF names are plain camelCase."""
    rest = name[len("UF_CRM_") :] if name.startswith("UF_CRM_") else None
    if rest is not None and re.fullmatch(r"\d+", rest):
        return f"ufCrm_{rest}"
    match = re.fullmatch(r"(\d+)_(\d+)", rest or "")
    if match:
        return f"ufCrm{match.group(1)}_{match.group(2)}"
    return snake_to_camel(name)


def uf_from_camel(name: str) -> str:
    match = re.fullmatch(r"ufCrm(\d*)_(\d+)", name)
    if match:
        prefix = f"{match.group(1)}_" if match.group(1) else ""
        return f"UF_CRM_{prefix}{match.group(2)}"
    return camel_to_upper(name)


def apply_fields(
    entity: Entity,
    record: dict[str, Any],
    fields: Any,
    next_id: Callable[[], int],
    *,
    camel: bool = False,
    original_uf: bool = False,
) -> None:
    """Write caller input into ``record`` (stored form). Unknown and read-only fields are
    ignored, as the docs say; ``UF_*`` custom fields are kept as given. ``camel`` reads
    crm.item names, including ``fm`` for multi-fields."""
    try:
        given = php_map(fields)
    except TypeError:
        raise FieldValueError("fields") from None
    for key, raw in given.items():
        if camel and key == "fm" and entity.has_multi:
            _apply_fm(record, raw, next_id)
            continue
        if camel and key.startswith("uf"):
            name = key if original_uf and key.startswith("UF_") else uf_from_camel(key)
            record[name] = raw
            continue
        if key.startswith("UF_"):
            record[key] = raw
            continue
        fld = entity.by_camel.get(key) if camel else entity.by_name.get(key.upper())
        if fld is None or fld.read_only or fld.type == "file":
            continue
        if fld.type == "crm_multifield":
            record[fld.name] = _merge_multi(record.get(fld.name, []), raw, fld.name, next_id)
            continue
        try:
            record[fld.name] = _parse(fld, raw)
        except (ValueError, TypeError):
            raise FieldValueError(key) from None


def _apply_fm(record: dict[str, Any], raw: Any, next_id: Callable[[], int]) -> None:
    try:
        items = list(php_map(raw).values())
    except TypeError:
        raise FieldValueError("fm") from None
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if not isinstance(item, Mapping) or str(item.get("typeId", "")).upper() not in MULTI_FIELDS:
            raise FieldValueError("fm")
        grouped.setdefault(str(item["typeId"]).upper(), []).append(
            {
                "ID": item.get("id", ""),
                "VALUE": item.get("value"),
                "VALUE_TYPE": item.get("valueType"),
            }
        )
    for type_id, entries in grouped.items():
        record[type_id] = _merge_multi(record.get(type_id, []), entries, type_id, next_id)


def _semantic(entity: Entity, stage: str | None) -> str:
    """P (in progress), S (success) or F (failure) for a stage id."""
    stage = (stage or "").split(":")[-1]
    if entity.code == "lead":
        return {"CONVERTED": "S", "JUNK": "F"}.get(stage, "P")
    return {"WON": "S", "LOSE": "F", "APOLOGY": "F"}.get(stage, "P")


def _sync_links(entity: Entity, record: dict[str, Any], before: Mapping[str, Any]) -> None:
    """Keep CONTACT_ID and CONTACT_IDS (COMPANY_ID/COMPANY_IDS) telling the same story: the
    one the caller changed wins, the single field being the first of the list."""
    for many, one in (("CONTACT_IDS", "CONTACT_ID"), ("COMPANY_IDS", "COMPANY_ID")):
        if many not in entity.by_name or one not in entity.by_name:
            continue
        if record.get(many) != before.get(many):
            record[one] = (record[many] or [None])[0]
        elif record.get(one) != before.get(one):
            record[many] = [record[one]] if record.get(one) else []


def finish_record(
    entity: Entity, record: dict[str, Any], before: dict[str, Any] | None, user_id: int, now: int
) -> None:
    """Defaults on create, then the fields Bitrix24 derives itself: stage semantics, closed
    flags, HAS_PHONE and friends, who changed what and when."""
    if before is None:
        for name, value in defaults(entity).items():
            record.setdefault(name, value)
        record.setdefault("OPENED", "Y")
        record.setdefault("ASSIGNED_BY_ID", user_id)
        record.update(CREATED_BY_ID=user_id, DATE_CREATE=now)
        if entity.code == "deal":
            record["IS_NEW"] = "Y"
    elif entity.code == "deal":
        record["IS_NEW"] = "N"
    record.update(
        MODIFY_BY_ID=user_id, DATE_MODIFY=now, LAST_ACTIVITY_BY=user_id, LAST_ACTIVITY_TIME=now
    )
    stage_field = {"lead": "STATUS_ID", "deal": "STAGE_ID"}.get(entity.code)
    if stage_field:
        if before is None or before.get(stage_field) != record.get(stage_field):
            record.update(MOVED_BY_ID=user_id, MOVED_TIME=now)
        semantic = _semantic(entity, record.get(stage_field))
        record["STATUS_SEMANTIC_ID" if entity.code == "lead" else "STAGE_SEMANTIC_ID"] = semantic
        closed = semantic != "P"
        if entity.code == "deal":
            record["CLOSED"] = "Y" if closed else "N"
        elif closed and not record.get("DATE_CLOSED"):
            record["DATE_CLOSED"] = now
    _sync_links(entity, record, before or {})
    if entity.code in ("lead", "deal"):
        linked = record.get("COMPANY_ID") or record.get("CONTACT_ID")
        record["IS_RETURN_CUSTOMER"] = "Y" if linked else "N"
    if entity.has_multi:
        record["HAS_PHONE"] = "Y" if record.get("PHONE") else "N"
        record["HAS_EMAIL"] = "Y" if record.get("EMAIL") else "N"
        imol = any(str(i.get("VALUE_TYPE")) in ("OPENLINE", "IMOL") for i in record.get("IM", []))
        record["HAS_IMOL"] = "Y" if imol else "N"


# --- values out ------------------------------------------------------------------------------


def _v2_value(fld: Field, value: Any) -> Any:
    """Old-method rendering: strings everywhere, "" for an empty date, null for the rest."""
    if fld.type == "crm_multifield":
        return [{**item, "ID": str(item["ID"])} for item in value or []]
    if fld.multiple:
        return list(value or [])
    if fld.type in ("date", "datetime"):
        if value is None:
            return ""
        return iso_date(value) if fld.type == "date" else iso_datetime(value)
    if value is None:
        return None
    if fld.type == "double":
        return f"{value:.2f}"
    return str(value)


def _item_value(fld: Field, value: Any) -> Any:
    """crm.item rendering: typed values, null when empty, ISO dates."""
    if fld.multiple:
        return list(value or [])
    if value is None:
        return None
    if fld.type == "date":
        return iso_date(value)
    if fld.type == "datetime":
        return iso_datetime(value)
    return value


def _uf_names(record: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in record if k.startswith("UF_"))


def _is_plain(fld: Field) -> bool:
    """Fields the old methods show as ``str(value)`` or null: everything but dates, numbers
    with decimals, lists and multi-fields."""
    return not (fld.multiple or fld.type in ("date", "datetime", "double", "crm_multifield"))


_STAR_PLANS: dict[str, tuple[tuple[str, ...], tuple[Field, ...]]] = {}


def _star_plan(entity: Entity) -> tuple[tuple[str, ...], tuple[Field, ...]]:
    """The fields ``select: ["*"]`` shows, in order, and those of them that need more than
    ``str``: computed once per entity, not per row."""
    plan = _STAR_PLANS.get(entity.code)
    if plan is None:
        star = [f for f in entity.fields if f.in_star and f.name != "ID"]
        names = ("ID", *(f.name for f in star))
        plan = _STAR_PLANS[entity.code] = (names, tuple(f for f in star if not _is_plain(f)))
    return plan


def _star_view(entity: Entity, record: Mapping[str, Any]) -> dict[str, Any]:
    """``v2_view`` for the default select, the shape every full export reads 2,500 times per
    request: plain fields by one comprehension, only the typed ones through ``_v2_value``."""
    names, typed = _star_plan(entity)
    get = record.get
    view = {name: (value if (value := get(name)) is None else str(value)) for name in names}
    for fld in typed:
        view[fld.name] = _v2_value(fld, get(fld.name))
    return view


def list_view(entity: Entity) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """How ``.list`` shows a record with the default select: the view ``Store.render`` keeps
    rendered (the export path) and seeding renders ahead."""
    return functools.partial(_star_view, entity)


def is_star(select: list[str] | None) -> bool:
    """True for a ``.list`` select that means every ``*`` field (none given, or ``["*"]``)."""
    return select is not None and (not select or select == ["*"])


def v2_view(entity: Entity, record: Mapping[str, Any], select: list[str] | None) -> dict[str, Any]:
    """The record as ``crm.<entity>.get`` (``select`` None) or ``.list`` shows it.

    ``.get`` returns every field plus the non-empty multi-fields and custom fields; ``.list``
    returns ``select`` with ``*`` (all but multi-fields and custom fields) and ``UF_*`` (all
    custom fields) masks, ``*`` when empty. ID is always included.
    """
    if is_star(select):
        return _star_view(entity, record)
    if select is None:
        names = [f.name for f in entity.fields if f.in_star]
        names += [n for n in MULTI_FIELDS if record.get(n)]
        names += _uf_names(record)
    else:
        wanted = [s.upper() if not s.startswith("UF_") else s for s in select] or ["*"]
        names = ["ID"]
        for name in wanted:
            if name == "*":
                names += [f.name for f in entity.fields if f.in_star]
            elif name == "UF_*":
                names += _uf_names(record)
            elif name in entity.by_name or name.startswith("UF_"):
                names.append(name)
    view: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        fld = entity.by_name.get(name)
        view[name] = _v2_value(fld, record.get(name)) if fld else record.get(name)
    return view


def item_view(
    entity: Entity,
    record: Mapping[str, Any],
    select: list[str] | None = None,
    original_uf: bool = False,
) -> dict[str, Any]:
    """The record as ``crm.item.*`` shows it. ``select`` None or with ``*`` gives every field
    and ``fm``; otherwise only the named fields (``id`` always)."""
    everything = not select or "*" in select
    chosen = set(select or ())
    view: dict[str, Any] = {}
    for fld in entity.fields:
        if fld.camel and (everything or fld.camel in chosen or fld.camel == "id"):
            view[fld.camel] = _item_value(fld, record.get(fld.name))
    for name in _uf_names(record):
        key = name if original_uf else uf_to_camel(name)
        if everything or key in chosen:
            view[key] = record[name]
    if everything and entity.has_multi:
        view["fm"] = [
            {
                "id": item["ID"],
                "typeId": item["TYPE_ID"],
                "valueType": item["VALUE_TYPE"],
                "value": item["VALUE"],
            }
            for name in MULTI_FIELDS
            for item in record.get(name, [])
        ]
    if everything:
        view["entityTypeId"] = entity.type_id
    return view


# --- filter columns --------------------------------------------------------------------------


def _column(fld: Field) -> Column:
    expr = json_field(fld.name)
    if fld.type == "crm_multifield":
        return Column(expr, "text", each="json_extract(j.value, '$.VALUE')")
    if fld.multiple:
        return Column(expr, "int", each="j.value")
    kind = {"double": "float", "datetime": "datetime", "date": "date", "char": "yn"}.get(
        fld.type, "int" if fld.type in INT_TYPES else "text"
    )
    return Column("id" if fld.name == "ID" else expr, kind)


def v2_column(entity: Entity, name: str) -> Column | None:
    """Filter/order column for an UPPER_CASE name (``UF_*`` compare as given)."""
    if name.startswith("UF_"):
        return Column(json_field(name), "auto")
    fld = entity.by_name.get(name.upper())
    return _column(fld) if fld else None


def item_column(entity: Entity, name: str, original_uf: bool = False) -> Column | None:
    """Filter/order column for a crm.item camelCase name."""
    if name.startswith("uf") or (original_uf and name.startswith("UF_")):
        return Column(json_field(name if name.startswith("UF_") else uf_from_camel(name)), "auto")
    fld = entity.by_camel.get(name)
    return _column(fld) if fld else None
