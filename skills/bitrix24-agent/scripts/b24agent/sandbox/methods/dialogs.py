"""Reading chats: ``im.dialog.get``, ``im.dialog.messages.get``, ``im.recent.list`` and
``im.search.chat.list`` (api-reference/chats/im-dialog-get.md, messages/im-dialog-messages-get.md,
im-recent-list.md, search/im-search-chat-list.md).

Group chats are the ``chat`` documents of ``chats``; a personal dialog (``DIALOG_ID`` a user id)
is the caller's messages with that user, and gets a chat id of its own the first time it is
read, as a portal creates a private chat on first contact. A caller sees only the chats it
belongs to: others answer ``ACCESS_ERROR`` as the docs say.
"""

from __future__ import annotations

import re
from typing import Any

from .. import docstore
from ..args import arg, positive_int
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError
from ..registry import method
from .chats import CHAT, find_chat
from .users import find_user, full_name

PRIVATE = "private_chat"
_DIALOG = re.compile(r"(chat)?([1-9][0-9]*)")


def _no_access() -> PortalError:
    return PortalError("ACCESS_ERROR", "You do not have access to the specified dialog", 403)


def _dialog(ctx: CallContext, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(DIALOG_ID, the chat document or a private chat document) the caller may read."""
    dialog = str(arg(params, "DIALOG_ID") or "").strip()
    match = _DIALOG.fullmatch(dialog)
    if match is None:
        raise PortalError("DIALOG_ID_EMPTY", "Dialog ID can't be empty")
    if match.group(1):
        chat = find_chat(ctx, match.group(2))
        if chat is None or ctx.auth.user_id not in chat["USERS"]:
            raise _no_access()
        return dialog, chat
    other = int(match.group(2))
    if find_user(ctx.portal.store, other) is None:
        raise _no_access()
    return dialog, _private_chat(ctx, other)


def _private_chat(ctx: CallContext, other: int) -> dict[str, Any]:
    pair = sorted({ctx.auth.user_id, other})
    key = ":".join(map(str, pair))
    store = ctx.portal.store
    with store.transaction():
        found = docstore.find(store, PRIVATE, PAIR=key)
        if found:
            return found[0]
        return docstore.add(store, PRIVATE, {"PAIR": key, "USERS": pair, "OWNER": 0})


def _messages(ctx: CallContext, dialog: str) -> list[dict[str, Any]]:
    """Messages of a dialog as the caller sees it, oldest first."""
    store = ctx.portal.store
    if dialog.startswith("chat"):
        return store.messages(dialog)
    me, other = str(ctx.auth.user_id), dialog
    return [
        m
        for m in store.messages()
        if (m["dialog_id"] == other and str(m["author_id"]) == me)
        or (m["dialog_id"] == me and str(m["author_id"]) == other)
    ]


def _chat_id(dialog: str, chat: dict[str, Any]) -> int:
    return int(chat["ID"])


def _chat_view(ctx: CallContext, dialog: str, chat: dict[str, Any]) -> dict[str, Any]:
    """The chat object of im.dialog.get / im.search.chat.list."""
    private = not dialog.startswith("chat")
    messages = _messages(ctx, dialog)
    last = messages[-1]["id"] if messages else 0
    owner = int(chat.get("OWNER") or 0)
    entity_type, entity_id = str(chat.get("ENTITY_TYPE") or ""), str(chat.get("ENTITY_ID") or "")
    if private:
        other = next((u for u in chat["USERS"] if u != ctx.auth.user_id), ctx.auth.user_id)
        name = full_name(find_user(ctx.portal.store, other) or {})
    else:
        name = str(chat.get("TITLE") or "")
    return {
        "id": int(chat["ID"]),
        "parent_chat_id": 0,
        "parent_message_id": 0,
        "name": name,
        "description": str(chat.get("DESCRIPTION") or ""),
        "owner": owner,
        "extranet": False,
        "avatar": "",
        "color": str(chat.get("COLOR") or "#4ba984"),
        "type": "private" if private else str(chat.get("TYPE") or "CHAT").lower(),
        "counter": 0,
        "user_counter": len(chat["USERS"]),
        "message_count": len(messages),
        "unread_id": 0,
        "restrictions": {
            "avatar": not private,
            "rename": not private,
            "extend": not private,
            "call": True,
            "mute": True,
            "leave": not private,
            "leave_owner": not private,
            "send": True,
            "user_list": True,
            "path": "",
            "path_title": "",
        },
        "last_message_id": last,
        "last_id": last,
        "marked_id": 0,
        "disk_folder_id": 0,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "entity_data_1": "",
        "entity_data_2": "",
        "entity_data_3": "",
        "mute_list": [],
        "date_create": iso_datetime(float(chat.get("DATE_CREATE") or 0)),
        "message_type": "P" if private else ("O" if chat.get("TYPE") == "OPEN" else "C"),
        "public": "",
        "role": "owner" if owner == ctx.auth.user_id else "member",
        "entity_link": {"type": entity_type, "url": "", "id": entity_id},
        "text_field_enabled": True,
        "background_id": None,
        "permissions": {
            "manage_users_add": "member",
            "manage_users_delete": "manager",
            "manage_ui": "member",
            "manage_settings": "owner",
            "manage_messages": "member",
            "can_post": "member",
        },
        "is_new": False,
    }


@method("im.dialog.get", scope="im")
def dialog_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dialog, chat = _dialog(ctx, params)
    view = _chat_view(ctx, dialog, chat)
    store = ctx.portal.store
    view["readed_list"] = [
        {"user_id": u, "user_name": full_name(find_user(store, u) or {}), "message_id": 0}
        | {"date": None}
        for u in chat["USERS"]
        if u != ctx.auth.user_id
    ]
    view["manager_list"] = [view["owner"]] if view["owner"] else []
    last = view["last_message_id"]
    view["last_message_views"] = {"message_id": last, "first_viewers": [], "count_of_viewers": 0}
    view["dialog_id"] = dialog
    return view


def _message_view(message: dict[str, Any], chat_id: int) -> dict[str, Any]:
    return {
        "id": message["id"],
        "chat_id": chat_id,
        "author_id": 0 if message["system"] == "Y" else message["author_id"],
        "date": iso_datetime(message["created"]),
        "text": message["text"],
        "unread": False,
        "uuid": None,
        "replaces": [],
        "params": [],
        "disappearing_date": None,
    }


def _user_view(ctx: CallContext, user_id: int) -> dict[str, Any] | None:
    user = find_user(ctx.portal.store, user_id)
    if user is None:
        return None
    return {
        "id": user_id,
        "active": True,
        "name": full_name(user),
        "first_name": str(user.get("NAME") or ""),
        "last_name": str(user.get("LAST_NAME") or ""),
        "work_position": str(user.get("WORK_POSITION") or ""),
        "color": "#1eb4aa",
        "avatar": "",
        "gender": str(user.get("PERSONAL_GENDER") or ""),
        "extranet": False,
        "bot": False,
        "departments": list(user.get("UF_DEPARTMENT") or []),
        "type": "user",
        "email": str(user.get("EMAIL") or ""),
    }


def _message_id(params: dict[str, Any], name: str) -> int | None:
    raw = arg(params, name)
    if raw in (None, "", 0, "0"):
        return None
    number = positive_int(raw)
    if number is None:
        code = f"{name}_STRING"
        raise PortalError(code, f"{name.split('_')[0].title()} ID can't be string")
    return number


@method("im.dialog.messages.get", scope="im")
def dialog_messages_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """Newest first; ``LAST_ID`` pages back (older than it), ``FIRST_ID`` forward."""
    dialog, chat = _dialog(ctx, params)
    last_id, first_id = _message_id(params, "LAST_ID"), _message_id(params, "FIRST_ID")
    limit = min(positive_int(arg(params, "LIMIT")) or 20, 50)
    messages = _messages(ctx, dialog)
    if last_id is not None:
        messages = [m for m in messages if m["id"] < last_id]
    if first_id is not None:
        chosen = [m for m in messages if m["id"] > first_id][:limit]
    else:
        chosen = messages[-limit:]
    chat_id = _chat_id(dialog, chat)
    views = [_message_view(m, chat_id) for m in reversed(chosen)]
    authors = dict.fromkeys(m["author_id"] for m in views if m["author_id"])
    users = [u for u in (_user_view(ctx, a) for a in authors) if u is not None]
    return {"chat_id": chat_id, "messages": views, "users": users, "files": []}


def _caller_dialogs(ctx: CallContext) -> list[tuple[str, dict[str, Any]]]:
    """Every dialog the caller has: its group chats and the users it exchanged messages with."""
    me = ctx.auth.user_id
    store = ctx.portal.store
    found = [(f"chat{c['ID']}", c) for c in docstore.find(store, CHAT, lambda c: me in c["USERS"])]
    others: dict[int, None] = {}
    for message in store.messages():
        author, target = int(message["author_id"]), message["dialog_id"]
        if target.isdigit() and author == me:
            others[int(target)] = None
        elif target == str(me) and author != me:
            others[author] = None
    for other in others:
        if find_user(store, other) is not None:
            found.append((str(other), _private_chat(ctx, other)))
    return found


def _recent_item(ctx: CallContext, dialog: str, chat: dict[str, Any]) -> dict[str, Any]:
    messages = _messages(ctx, dialog)
    last = messages[-1] if messages else None
    when = iso_datetime(last["created"] if last else float(chat.get("DATE_CREATE") or 0))
    private = not dialog.startswith("chat")
    view = _chat_view(ctx, dialog, chat)
    item: dict[str, Any] = {
        "id": int(dialog) if private else dialog,
        "chat_id": int(chat["ID"]),
        "type": "user" if private else "chat",
        "avatar": {"url": "", "color": view["color"]},
        "title": view["name"],
        "message": {
            "id": last["id"] if last else 0,
            "text": last["text"] if last else "",
            "file": False,
            "author_id": last["author_id"] if last else 0,
            "attach": False,
            "sticker": None,
            "date": when,
            "status": "received",
            "uuid": None,
        },
        "counter": 0,
        "last_id": view["last_id"],
        "pinned": False,
        "unread": False,
        "has_reminder": False,
        "date_update": when,
        "date_last_activity": when,
        "options": [],
    }
    if private:
        item["user"] = _user_view(ctx, int(dialog))
        item["chat"] = {"text_field_enabled": True, "background_id": None, "mute_list": []}
    else:
        item["chat"] = view
    return item


@method("im.recent.list", scope="im")
def recent_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """The caller's dialogs, latest activity first; ``OFFSET``/``LIMIT`` (50, at most 200)."""
    skip_chat = str(arg(params, "SKIP_CHAT") or "N").upper() == "Y"
    skip_dialog = str(arg(params, "SKIP_DIALOG") or "N").upper() == "Y"
    items = [
        _recent_item(ctx, dialog, chat)
        for dialog, chat in _caller_dialogs(ctx)
        if not (skip_chat and dialog.startswith("chat"))
        and not (skip_dialog and not dialog.startswith("chat"))
    ]
    items.sort(key=lambda i: (i["date_last_activity"], i["message"]["id"]), reverse=True)
    offset = positive_int(arg(params, "OFFSET")) or 0
    limit = min(positive_int(arg(params, "LIMIT")) or 50, 200)
    chosen = items[offset : offset + limit]
    more = offset + limit < len(items)
    result = {
        "items": chosen,
        "hasMorePages": more,
        "hasMore": more,
        "copilot": None,
        "messagesAutoDeleteConfigs": [],
    }
    return Page(result, -1)


@method("im.search.chat.list", scope="im")
def search_chat_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """Group chats of the caller whose name contains ``FIND`` (2+ characters)."""
    phrase = str(arg(params, "FIND") or arg(params, "FIND_LINES") or "").strip()
    if len(phrase) < 2:
        raise PortalError("FIND_SHORT", "Too short a search phrase.")
    if not arg(params, "FIND"):
        return Page([], 0)  # no open channels in the sandbox
    wanted = phrase.lower()
    chats = [
        (dialog, chat)
        for dialog, chat in _caller_dialogs(ctx)
        if dialog.startswith("chat") and wanted in str(chat.get("TITLE") or "").lower()
    ]
    offset = positive_int(arg(params, "OFFSET")) or 0
    limit = min(positive_int(arg(params, "LIMIT")) or 10, 50)
    views = [_chat_view(ctx, d, c) for d, c in chats[offset : offset + limit]]
    more = offset + limit < len(chats)
    return Page(views, len(chats), offset + limit if more else None)
