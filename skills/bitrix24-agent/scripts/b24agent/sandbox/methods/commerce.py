"""Catalog products and CRM product rows: ``catalog.product.add|list``
(api-reference/catalog/product/*) and ``crm.item.productrow.add|list``
(crm/universal/product-rows/*).

One product catalog (``iblockId`` 14, as a fresh portal's CRM catalog); products keep a small set
of the documented ``catalog_product`` fields, camelCase as the docs show them. A product row
takes its name from the product when none is given, like the portal does.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, positive_int
from ..context import CallContext
from ..crm_fields import ENTITIES
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError, argument_error
from ..filters import select_list
from ..registry import method

PRODUCT, ROW = "catalog_product", "crm_product_row"
#: The CRM product catalog's information block on a fresh portal.
CATALOG_IBLOCK = 14
_PRODUCT_FIELDS = (
    "id",
    "iblockId",
    "name",
    "active",
    "code",
    "xmlId",
    "sort",
    "previewText",
    "detailText",
    "measure",
    "vatIncluded",
    "createdBy",
    "modifiedBy",
    "dateCreate",
    "timestampX",
    "type",
    "available",
    "bundle",
)
#: CRM object type short codes for product rows (crm/data-types.md#object_type).
_OWNER_TYPES = {"L": "lead", "D": "deal", "Q": "quote", "SI": "smart_invoice"}


def _camel_filter(raw: Any) -> dict[str, Any]:
    """A filter keyed by camelCase fields, prefixes kept (``%name``, ``>=id``)."""
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def _matches(doc: dict[str, Any], conditions: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """docstore.matches over camelCase fields (it compares names in upper case)."""
    shaped = {name.upper(): doc.get(name) for name in fields}
    return docstore.matches(shaped, conditions, tuple(f.upper() for f in fields))


def _product_view(product: dict[str, Any], select: list[str]) -> dict[str, Any]:
    wanted = [f for f in _PRODUCT_FIELDS if not select or "*" in select or f in select]
    return {f: product.get(f) for f in wanted}


@method("catalog.product.add", scope="catalog")
def product_add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    fields = arg(params, "fields")
    if not isinstance(fields, dict):
        raise argument_error("Required fields: fields", "fields")
    if positive_int(fields.get("iblockId")) != CATALOG_IBLOCK:
        raise PortalError("ERROR_ARGUMENT", "Required fields: iblockId (the product catalog)")
    name = str(fields.get("name") or "").strip()
    if not name:
        raise PortalError("ERROR_ARGUMENT", "Required fields: name")
    now, user = iso_datetime(time.time()), ctx.auth.user_id
    product = {
        "iblockId": CATALOG_IBLOCK,
        "name": name,
        "active": str(fields.get("active") or "Y"),
        "code": fields.get("code"),
        "xmlId": fields.get("xmlId"),
        "sort": int(fields.get("sort") or 500),
        "previewText": fields.get("previewText"),
        "detailText": fields.get("detailText"),
        "measure": positive_int(fields.get("measure")) or 5,
        "vatIncluded": str(fields.get("vatIncluded") or "N"),
        "createdBy": user,
        "modifiedBy": user,
        "dateCreate": now,
        "timestampX": now,
        "type": 1,
        "available": "Y",
        "bundle": "N",
    }
    doc = docstore.add(ctx.portal.store, PRODUCT, product, id_key="id")
    return {"element": _product_view(doc, [])}


@method("catalog.product.list", scope="catalog")
def product_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """``{"products": [...]}``; ``select`` must name ``id`` and ``iblockId``, ``filter`` must
    give ``iblockId`` (catalog-product-list.md)."""
    select = select_list(arg(params, "select"))
    filter_ = _camel_filter(arg(params, "filter"))
    if not {"id", "iblockId"} <= set(select):
        raise argument_error("Required select fields: id, iblockId", "select")
    if not any(k.lstrip("=") == "iblockId" for k in filter_):
        raise argument_error("Required filter fields: iblockId", "filter")
    docs = docstore.find(ctx.portal.store, PRODUCT, lambda d: _matches(d, filter_, _PRODUCT_FIELDS))
    order = {str(k): v for k, v in (arg(params, "order") or {"id": "ASC"}).items()}
    docstore.sort(docs, {k.upper(): v for k, v in order.items()}, _upper_fields(), _by_upper)
    views = [_product_view(d, select) for d in docs]
    page = docstore.page(views, arg(params, "start"))
    return Page({"products": page.items}, page.total, page.next)


def _upper_fields() -> tuple[str, ...]:
    return tuple(f.upper() for f in _PRODUCT_FIELDS)


def _by_upper(doc: dict[str, Any], name: str) -> Any:
    return next((v for k, v in doc.items() if k.upper() == name), None)


# --- product rows -----------------------------------------------------------------------------

_ROW_FIELDS = (
    "id",
    "ownerId",
    "ownerType",
    "productId",
    "price",
    "quantity",
    "discountTypeId",
    "discountRate",
    "taxRate",
    "taxIncluded",
    "measureCode",
    "sort",
    "type",
    "productName",
    "priceAccount",
    "priceExclusive",
    "priceNetto",
    "priceBrutto",
    "discountSum",
    "customized",
    "measureName",
    "xmlId",
)


def _owner(ctx: CallContext, owner_type: Any, owner_id: Any) -> tuple[str, int]:
    kind = _OWNER_TYPES.get(str(owner_type or "").upper())
    number = positive_int(owner_id)
    if kind is None or number is None:
        raise argument_error("Required fields: ownerId, ownerType", "fields")
    entity = ENTITIES.get(kind)
    if entity is not None and ctx.portal.store.get(entity.table, number) is None:
        raise PortalError("NOT_FOUND", "The CRM object was not found")
    return str(owner_type).upper(), number


def _money(value: float) -> float:
    return round(value, 2)


@method("crm.item.productrow.add", scope="crm")
def productrow_add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    fields = arg(params, "fields")
    if not isinstance(fields, dict):
        raise argument_error("Required fields: fields", "fields")
    owner_type, owner_id = _owner(ctx, fields.get("ownerType"), fields.get("ownerId"))
    product_id = positive_int(fields.get("productId")) or 0
    product = docstore.get(ctx.portal.store, PRODUCT, product_id) if product_id else None
    if product_id and product is None:
        raise PortalError("NOT_FOUND", f"Product {product_id} was not found")
    price = float(fields.get("price") or 0)
    quantity = float(fields.get("quantity") or 1)
    rate = float(fields.get("discountRate") or 0)
    tax = fields.get("taxRate")
    netto = price / (1 - rate / 100) if rate < 100 else price
    row = {
        "ownerId": owner_id,
        "ownerType": owner_type,
        "productId": product_id,
        "price": price,
        "quantity": quantity,
        "discountTypeId": int(fields.get("discountTypeId") or 2),
        "discountRate": rate,
        "taxRate": None if tax is None else float(tax),
        "taxIncluded": str(fields.get("taxIncluded") or "N"),
        "measureCode": int(fields.get("measureCode") or 796),
        "sort": int(fields.get("sort") or 10),
        "type": 1 if product else 4,
        "productName": str(fields.get("productName") or (product or {}).get("name") or ""),
        "priceAccount": price,
        "priceExclusive": price,
        "priceNetto": _money(netto),
        "priceBrutto": _money(netto),
        "discountSum": _money(netto - price),
        "customized": "Y",
        "measureName": "pcs",
        "xmlId": "",
    }
    doc = docstore.add(ctx.portal.store, ROW, row, id_key="id")
    return {"productRow": {f: doc.get(f) for f in _ROW_FIELDS}}


@method("crm.item.productrow.list", scope="crm")
def productrow_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """``{"productRows": [...]}``; the filter must hold ``=ownerType`` and ``=ownerId``."""
    filter_ = _camel_filter(arg(params, "filter"))
    if "=ownerType" not in filter_ or "=ownerId" not in filter_:
        raise argument_error("Required filter fields: =ownerType, =ownerId", "filter")
    docs = docstore.find(ctx.portal.store, ROW, lambda d: _matches(d, filter_, _ROW_FIELDS))
    rows = [{f: d.get(f) for f in _ROW_FIELDS} for d in docs]
    page = docstore.page(rows, arg(params, "start"))
    return Page({"productRows": page.items}, page.total, page.next)
