"""News feed posts: ``log.blogpost.add`` and ``log.blogpost.get``
(api-reference/log/log-blogpost-add.md, log-blogpost-get.md).

A post goes to ``DEST`` (default ``UA``, everyone): ``U<id>`` users, ``SG<id>`` workgroups (that
must exist), ``DR<id>`` departments. ``log.blogpost.get`` shows the caller the posts they may
read (everyone's, their own, addressed to them or to a group they belong to), newest first.
Attached files are kept as name and size.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .. import docstore
from ..args import arg, decode_file, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError
from ..registry import method
from .sonet import find_group, is_member
from .users import find_user

KIND = "blog_post"
_DEST = re.compile(r"^(UA|U[1-9][0-9]*|SG[1-9][0-9]*|DR[1-9][0-9]*)$")


def _failed(text: str = "Blog post hasn't been added") -> PortalError:
    return PortalError("SONET_CONTROLLER_LIVEFEED_BLOGPOST_ADD_ERROR", text)


def _destinations(ctx: CallContext, raw: Any) -> list[str]:
    codes = [str(c).strip().upper() for c in (raw if isinstance(raw, list) else [raw]) if c]
    codes = codes or ["UA"]
    for code in codes:
        if not _DEST.match(code) or (code.startswith("SG") and not find_group(ctx, code[2:])):
            raise _failed("No destination specified")
    return list(dict.fromkeys(codes))


def _files(raw: Any) -> list[dict[str, Any]]:
    files = []
    for pair in raw or []:
        decoded = decode_file(pair)
        if decoded is None:
            raise _failed()
        files.append({"NAME": decoded[0], "SIZE": decoded[1]})
    return files


@method("log.blogpost.add", scope="log")
def add(ctx: CallContext, params: dict[str, Any]) -> int:
    query = upper_keys(params)
    text = str(query.get("POST_MESSAGE") or "").strip()
    if not text:
        raise _failed()
    author = ctx.auth.user_id
    wanted = positive_int(query.get("USER_ID"))
    if wanted and ctx.auth.is_admin and find_user(ctx.portal.store, wanted):
        author = wanted
    post = {
        "AUTHOR_ID": author,
        "TITLE": str(query.get("POST_TITLE") or ""),
        "DETAIL_TEXT": text,
        "DEST": _destinations(ctx, query.get("DEST", query.get("SPERM"))),
        "IMPORTANT": "Y" if str(query.get("IMPORTANT") or "N").upper() == "Y" else "N",
        "TAGS": str(query.get("TAGS") or ""),
        "FILES": _files(query.get("FILES")),
        "DATE_PUBLISH": int(time.time()),
    }
    return int(docstore.add(ctx.portal.store, KIND, post)["ID"])


def _readable(ctx: CallContext, post: dict[str, Any]) -> bool:
    user = ctx.auth.user_id
    if post["AUTHOR_ID"] == user:
        return True
    for code in post["DEST"]:
        if code in ("UA", f"U{user}") or code.startswith("DR"):
            return True
        group = find_group(ctx, code[2:]) if code.startswith("SG") else None
        if group is not None and is_member(group, user):
            return True
    return False


def _view(post: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": str(post["ID"]),
        "BLOG_ID": str(post["AUTHOR_ID"]),
        "PUBLISH_STATUS": "P",
        "TITLE": post["TITLE"],
        "AUTHOR_ID": str(post["AUTHOR_ID"]),
        "ENABLE_COMMENTS": "Y",
        "NUM_COMMENTS": "0",
        "CODE": None,
        "MICRO": "N" if post["TITLE"] else "Y",
        "DETAIL_TEXT": post["DETAIL_TEXT"],
        "DATE_PUBLISH": iso_datetime(post["DATE_PUBLISH"]),
        "CATEGORY_ID": "",
        "HAS_SOCNET_ALL": "Y" if "UA" in post["DEST"] else "N",
        "HAS_TAGS": "Y" if post["TAGS"] else "N",
        "HAS_IMAGES": "N",
        "HAS_PROPS": "Y" if post["IMPORTANT"] == "Y" else "N",
        "UF_BLOG_POST_IMPRTNT": 1 if post["IMPORTANT"] == "Y" else None,
        "FILES": post["FILES"],
    }


@method("log.blogpost.get", scope="log")
def get(ctx: CallContext, params: dict[str, Any]) -> Page:
    post_id = positive_int(arg(params, "POST_ID"))
    rights = arg(params, "LOG_RIGHTS")
    codes = {str(c).upper() for c in (rights if isinstance(rights, list) else [rights]) if c}

    def shown(post: dict[str, Any]) -> bool:
        if post_id is not None:
            return post["ID"] == post_id and _readable(ctx, post)
        return _readable(ctx, post) and (not codes or bool(codes & set(post["DEST"])))

    posts = docstore.find(ctx.portal.store, KIND, where=shown)
    posts.reverse()
    return docstore.page([_view(p) for p in posts], arg(params, "start"))
