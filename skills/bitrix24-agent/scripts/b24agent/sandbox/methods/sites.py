"""Sites: ``landing.landing.getList``, ``landing.landing.publication`` and
``landing.landing.getpublicurl`` (api-reference/landing/page/methods/*).

The portal has one site with two pages from the start (sites are built in the designer, not
through these methods): "Home", published, and "Spring sale", a draft. Publishing is the state a
test can change; it lives in the store, so ``reset`` puts the draft back.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, id_list, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..errors import PortalError
from ..filters import select_list
from ..registry import method

PUBLISHED = "landing_published"
SITE_URL = "https://sandbox.bitrix24.site"
#: (ID, TITLE, CODE, published at start) of the site's pages.
_PAGES = ((1, "Home", "home", True), (2, "Spring sale", "spring-sale", False))
_FIELDS = ("ID", "TITLE", "CODE", "ACTIVE", "PUBLIC", "SITE_ID", "FOLDER_ID", "DELETED")
_FIELDS += ("DATE_MODIFY", "DOMAIN_ID")


def _published(ctx: CallContext, page_id: int, default: bool) -> bool:
    marks = docstore.find(ctx.portal.store, PUBLISHED, PAGE=page_id)
    return bool(marks[-1]["ACTIVE"]) if marks else default


def _pages(ctx: CallContext) -> list[dict[str, Any]]:
    pages = []
    for page_id, title, code, published in _PAGES:
        active = "Y" if _published(ctx, page_id, published) else "N"
        pages.append(
            {
                "ID": str(page_id),
                "TITLE": title,
                "CODE": code,
                "ACTIVE": active,
                "PUBLIC": active,
                "SITE_ID": "1",
                "FOLDER_ID": None,
                "DELETED": "N",
                "DATE_MODIFY": iso_datetime(time.time()),
                "DOMAIN_ID": "1",
            }
        )
    return pages


@method("landing.landing.getlist", scope="landing")
def landing_get_list(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Pages matching ``params.filter`` with the ``params.select`` fields (all by default)."""
    query = upper_keys(arg(params, "params"))
    select = [s.upper() for s in select_list(query.get("SELECT"))] or ["*"]
    pages = [p for p in _pages(ctx) if docstore.matches(p, query.get("FILTER") or {}, _FIELDS)]
    docstore.sort(pages, query.get("ORDER") or {}, _FIELDS)
    wanted = _FIELDS if "*" in select else [f for f in _FIELDS if f in select]
    return [{f: page[f] for f in wanted} for page in pages]


def _page_id(params: dict[str, Any]) -> int:
    raw = arg(params, "lid")
    if raw is None:
        raise PortalError("MISSING_PARAMS", "Required parameter lid is missing")
    page_id = positive_int(raw)
    if page_id not in {p[0] for p in _PAGES}:
        raise PortalError("LANDING_NOT_EXIST", "Page not found")
    return page_id


@method("landing.landing.publication", scope="landing")
def landing_publication(ctx: CallContext, params: dict[str, Any]) -> bool:
    page_id = _page_id(params)
    docstore.add(ctx.portal.store, PUBLISHED, {"PAGE": page_id, "ACTIVE": True})
    return True


@method("landing.landing.getpublicurl", scope="landing")
def landing_public_url(ctx: CallContext, params: dict[str, Any]) -> Any:
    """One ``lid``: its URL; a list: ``{"<ID>": "<URL>"}`` of the pages found."""
    raw = arg(params, "lid")
    codes = {page_id: code for page_id, _, code, _ in _PAGES}
    if isinstance(raw, list):
        return {str(i): f"{SITE_URL}/{codes[i]}/" for i in id_list(raw) if i in codes}
    return f"{SITE_URL}/{codes[_page_id(params)]}/"
