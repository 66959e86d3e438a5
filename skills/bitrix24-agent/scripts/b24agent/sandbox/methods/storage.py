"""App data storage and consents: ``entity.add``, ``entity.item.add|get``
(api-reference/entity/*) and ``userconsent.agreement.list``, ``userconsent.consent.add``
(api-reference/user-consent/*).

Storages belong to the application that made them (``entity.*`` works only in an app context:
a webhook gets ``ACCESS_DENIED``). The portal has two consent agreements from the start, since
agreements are made in the portal's settings, not through REST.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Any

from .. import docstore
from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError, argument_error
from ..registry import method

STORAGE, ITEM, CONSENT = "entity_storage", "entity_item", "user_consent"
_CODE = re.compile(r"[A-Za-z0-9_]+")
#: 50 - len("APP_<clientId>_") for a typical client id (entity-add.md).
MAX_CODE = 13
_ITEM_FIELDS = (
    "ID",
    "TIMESTAMP_X",
    "MODIFIED_BY",
    "DATE_CREATE",
    "CREATED_BY",
    "ACTIVE",
    "DATE_ACTIVE_FROM",
    "DATE_ACTIVE_TO",
    "SORT",
    "NAME",
    "PREVIEW_PICTURE",
    "PREVIEW_TEXT",
    "DETAIL_PICTURE",
    "DETAIL_TEXT",
    "CODE",
    "ENTITY",
    "SECTION",
)


def _app(ctx: CallContext) -> str:
    if ctx.auth.kind != "oauth" or not ctx.auth.client_id:
        raise PortalError("ACCESS_DENIED", "Access denied! Application context required", 403)
    return ctx.auth.client_id


def _code(params: dict[str, Any]) -> str:
    code = str(arg(params, "ENTITY") or "")
    code = "".join(_CODE.findall(code))
    if not code:
        raise argument_error("Argument 'ENTITY' is null or empty", "ENTITY")
    if len(code) > MAX_CODE:
        raise argument_error(f"Entity code is too long. Max length is {MAX_CODE} characters.")
    return code


def _storage(ctx: CallContext, params: dict[str, Any]) -> str:
    app, code = _app(ctx), _code(params)
    if not docstore.find(ctx.portal.store, STORAGE, APP=app, ENTITY=code):
        raise PortalError("ERROR_ENTITY_NOT_FOUND", "Entity not found")
    return code


@method("entity.add", scope="entity")
def entity_add(ctx: CallContext, params: dict[str, Any]) -> bool:
    app, code = _app(ctx), _code(params)
    name = str(arg(params, "NAME") or "").strip()
    if not name:
        raise argument_error("Argument 'NAME' is null or empty", "NAME")
    store = ctx.portal.store
    with store.transaction():
        if docstore.find(store, STORAGE, APP=app, ENTITY=code):
            raise PortalError("ERROR_ENTITY_ALREADY_EXISTS", "Entity already exists")
        access = {str(k): str(v) for k, v in upper_keys(arg(params, "ACCESS")).items()}
        access = {k: v for k, v in access.items() if v in ("R", "W", "X")}
        access[f"U{ctx.auth.user_id}"] = "X"
        docstore.add(store, STORAGE, {"APP": app, "ENTITY": code, "NAME": name, "ACCESS": access})
    return True


@method("entity.item.add", scope="entity")
def entity_item_add(ctx: CallContext, params: dict[str, Any]) -> int:
    code = _storage(ctx, params)
    now, user = iso_datetime(time.time()), str(ctx.auth.user_id)
    item: dict[str, Any] = {name: None for name in _ITEM_FIELDS}
    item.update(
        APP=ctx.auth.client_id,
        TIMESTAMP_X=now,
        MODIFIED_BY=user,
        DATE_CREATE=now,
        CREATED_BY=user,
        ACTIVE="Y",
        DATE_ACTIVE_FROM=str(arg(params, "DATE_ACTIVE_FROM") or ""),
        DATE_ACTIVE_TO=str(arg(params, "DATE_ACTIVE_TO") or ""),
        SORT=str(arg(params, "SORT") or "500"),
        NAME=str(arg(params, "NAME") or ""),
        ENTITY=code,
        SECTION=None if arg(params, "SECTION") is None else str(arg(params, "SECTION")),
    )
    return int(docstore.add(ctx.portal.store, ITEM, item)["ID"])


@method("entity.item.get", scope="entity")
def entity_item_get(ctx: CallContext, params: dict[str, Any]) -> Page:
    """Items of one storage; FILTER and SORT over the item fields, 50 a page."""
    code = _storage(ctx, params)
    filter_ = arg(params, "FILTER") or {}
    items = docstore.find(
        ctx.portal.store,
        ITEM,
        lambda d: docstore.matches(d, filter_, _ITEM_FIELDS),
        APP=ctx.auth.client_id,
        ENTITY=code,
    )
    docstore.sort(items, arg(params, "SORT") or {"ID": "ASC"}, _ITEM_FIELDS)
    rows = [{n: str(i["ID"]) if n == "ID" else i.get(n) for n in _ITEM_FIELDS} for i in items]
    return docstore.page(rows, arg(params, "start"))


# --- consents -----------------------------------------------------------------------------

#: The portal's agreements (made in its settings, read by REST).
AGREEMENTS = (
    {"ID": "1", "NAME": "Consent to personal data processing", "ACTIVE": "Y"},
    {"ID": "2", "NAME": "Consent to receive newsletters", "ACTIVE": "Y"},
)


@method("userconsent.agreement.list", scope="userconsent")
def agreement_list(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Newest first, as in the docs' example."""
    return [{**a, "LANGUAGE_ID": None} for a in reversed(AGREEMENTS)]


@method("userconsent.consent.add", scope="userconsent")
def consent_add(ctx: CallContext, params: dict[str, Any]) -> int:
    query = upper_keys(params)
    agreement = positive_int(query.get("AGREEMENT_ID"))
    if agreement is None:
        raise argument_error("Parameter `Agreement ID` required", "AGREEMENT_ID")
    if str(agreement) not in {a["ID"] for a in AGREEMENTS}:
        raise argument_error(f"Agreement with id `{agreement}` not found", "AGREEMENT_ID")
    try:
        ip = str(ipaddress.ip_address(str(query.get("IP") or "").strip()))
    except ValueError:
        raise argument_error("Invalid IP address", "IP") from None
    consent = {
        "AGREEMENT_ID": agreement,
        "USER_ID": positive_int(query.get("USER_ID")),
        "IP": ip,
        "URL": str(query.get("URL") or ""),
        "ORIGIN_ID": str(query.get("ORIGIN_ID") or ""),
        "ORIGINATOR_ID": str(query.get("ORIGINATOR_ID") or ""),
        "DATE_INSERT": iso_datetime(time.time()),
    }
    return int(docstore.add(ctx.portal.store, CONSENT, consent)["ID"])
