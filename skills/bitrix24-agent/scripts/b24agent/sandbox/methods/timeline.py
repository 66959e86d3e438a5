"""Timeline comments: ``crm.timeline.comment.add|get|list|update|delete``
(api-reference/crm/timeline/comments/crm-timeline-comment-*.md).

A comment belongs to one lead, deal, contact or company (``ENTITY_TYPE`` + ``ENTITY_ID``); that
record must exist. Files come as ``[name, base64]`` pairs and are kept as name and size only,
which is all a rehearsal needs to see: the list shows them as the docs' ``FILES`` map.
Since crm 23.100 only the lower-case ``fields`` key is read, so the sandbox reads only that too.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, decode_file, positive_int, upper_keys
from ..context import CallContext
from ..crm_fields import ENTITIES
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError, argument_error
from ..filters import select_list
from ..registry import method

KIND = "timeline_comment"
_ORDERABLE = ("ID", "CREATED", "AUTHOR_ID")


def _not_found() -> PortalError:
    return PortalError("NOT_FOUND", "Not found.")


def _owner(ctx: CallContext, entity_type: Any, entity_id: Any) -> tuple[str, int]:
    """The (type, id) a comment is attached to, checked to exist."""
    code = str(entity_type or "").strip().lower()
    record_id = positive_int(entity_id)
    if not code or record_id is None:
        raise PortalError("100", "Required fields are not provided")
    entity = ENTITIES.get(code)
    if entity is None or ctx.portal.store.get(entity.table, record_id) is None:
        raise PortalError("OWNER_NOT_FOUND", "Owner of the item not found")
    return code, record_id


def _files(ctx: CallContext, raw: Any) -> list[dict[str, Any]]:
    files = []
    for pair in raw or []:
        decoded = decode_file(pair)
        if decoded is None:
            raise argument_error("FILES must be a list of [name, base64 content]", "FILES")
        name, size = decoded
        files.append({"id": ctx.portal.store.next_value("crm_file"), "name": name, "size": size})
    return files


def _view(comment: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
    view = {
        "ID": str(comment["ID"]),
        "ENTITY_ID": str(comment["ENTITY_ID"]),
        "ENTITY_TYPE": comment["ENTITY_TYPE"],
        "CREATED": iso_datetime(comment["CREATED"]),
        "COMMENT": comment["COMMENT"],
        "AUTHOR_ID": str(comment["AUTHOR_ID"]),
        "FILES": {
            str(f["id"]): {**f, "type": "file", "authorId": comment["AUTHOR_ID"]}
            for f in comment["FILES"]
        },
    }
    if select:
        wanted = {s.upper() for s in select}
        view = {k: v for k, v in view.items() if k in wanted or k == "ID"}
    return view


def _fields(params: dict[str, Any]) -> dict[str, Any]:
    fields = params.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise PortalError("100", "Required fields are not provided")
    return {str(k).upper(): v for k, v in fields.items()}


def _text(raw: Any) -> str:
    text = "" if raw is None else str(raw)
    if not text.strip():
        raise PortalError("INVALID_ARG_VALUE", "Empty comment")
    return text


def _comment(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    comment_id = positive_int(arg(params, "id"))
    comment = docstore.get(ctx.portal.store, KIND, comment_id) if comment_id else None
    if comment is None:
        raise _not_found()
    return comment


@method("crm.timeline.comment.add", scope="crm")
def add(ctx: CallContext, params: dict[str, Any]) -> int:
    fields = _fields(params)
    entity_type, entity_id = _owner(ctx, fields.get("ENTITY_TYPE"), fields.get("ENTITY_ID"))
    comment = {
        "ENTITY_TYPE": entity_type,
        "ENTITY_ID": entity_id,
        "COMMENT": _text(fields.get("COMMENT")),
        "AUTHOR_ID": ctx.auth.user_id,
        "CREATED": int(time.time()),
    }
    with ctx.portal.store.transaction():
        comment["FILES"] = _files(ctx, fields.get("FILES"))
        return int(docstore.add(ctx.portal.store, KIND, comment)["ID"])


@method("crm.timeline.comment.get", scope="crm")
def get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return _view(_comment(ctx, params))


@method("crm.timeline.comment.update", scope="crm")
def update(ctx: CallContext, params: dict[str, Any]) -> int:
    comment = _comment(ctx, params)
    fields = _fields(params)
    comment["COMMENT"] = _text(fields.get("COMMENT"))
    docstore.put(ctx.portal.store, KIND, comment["ID"], comment)
    return int(comment["ID"])


@method("crm.timeline.comment.delete", scope="crm")
def delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    return docstore.remove(ctx.portal.store, KIND, int(_comment(ctx, params)["ID"]))


@method("crm.timeline.comment.list", scope="crm")
def list_(ctx: CallContext, params: dict[str, Any]) -> Page:
    conditions = upper_keys(arg(params, "filter"))
    entity_type, entity_id = _owner(ctx, conditions.get("ENTITY_TYPE"), conditions.get("ENTITY_ID"))
    rows = docstore.find(ctx.portal.store, KIND, ENTITY_TYPE=entity_type, ENTITY_ID=entity_id)
    docstore.sort(rows, arg(params, "order"), _ORDERABLE)
    select = select_list(arg(params, "select"))
    return docstore.page([_view(c, select) for c in rows], arg(params, "start"))
