"""Group chats and notifications: ``im.chat.add|get``, ``im.chat.user.list|add`` and
``im.notify.system.add`` / ``im.notify.personal.add`` (api-reference/chats/im-chat-*.md,
chat-users/*.md, notifications/im-notify-*-add.md).

A chat's messages go to the same message log as ``im.message.add`` (dialog ``chat<ID>``), so the
admin ``messages`` operation shows a kickoff message next to later posts. Notifications are kept
as documents (admin ``docs`` with kind ``notify``); a notification with a ``TAG`` replaces the
earlier ones with the same tag from the same application, which is how a repeated SLA alert
stays one alert. Over a webhook a ``TAG`` counts only together with ``CLIENT_ID``.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, id_list, positive_int, upper_keys
from ..context import CallContext
from ..errors import PortalError
from ..registry import method
from .users import find_user, full_name

CHAT = "chat"
NOTIFY = "notify"
_CHAT_TYPES = ("CHAT", "OPEN")


def find_chat(ctx: CallContext, chat_id: Any) -> dict[str, Any] | None:
    number = positive_int(chat_id)
    return docstore.get(ctx.portal.store, CHAT, number) if number else None


def _known_users(ctx: CallContext, raw: Any) -> list[int]:
    """Ids of existing users among ``raw``; others are skipped, as the portal does."""
    return [u for u in id_list(raw) if find_user(ctx.portal.store, u) is not None]


@method("im.chat.add", scope="im")
def chat_add(ctx: CallContext, params: dict[str, Any]) -> int:
    query = upper_keys(params)
    chat_type = str(query.get("TYPE") or "CHAT").upper()
    if chat_type not in _CHAT_TYPES:
        chat_type = "CHAT"
    users = [ctx.auth.user_id, *_known_users(ctx, query.get("USERS"))]
    members = list(dict.fromkeys(users))
    title = str(query.get("TITLE") or "").strip()
    if not title:
        names = [full_name(find_user(ctx.portal.store, u) or {}) for u in members]
        title = "Chat with " + ", ".join(n for n in names if n)
    chat = {
        "TYPE": chat_type,
        "TITLE": title,
        "DESCRIPTION": str(query.get("DESCRIPTION") or ""),
        "COLOR": str(query.get("COLOR") or ""),
        "OWNER": ctx.auth.user_id,
        "USERS": members,
        "ENTITY_TYPE": str(query.get("ENTITY_TYPE") or ""),
        "ENTITY_ID": str(query.get("ENTITY_ID") or ""),
        "DATE_CREATE": int(time.time()),
    }
    store = ctx.portal.store
    with store.transaction():
        chat_id = int(docstore.add(store, CHAT, chat)["ID"])
        first = str(query.get("MESSAGE") or "").strip()
        if first:
            store.add_message(f"chat{chat_id}", ctx.auth.user_id, first, False)
    return chat_id


@method("im.chat.get", scope="im")
def chat_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, int] | None:
    """The chat bound to ``ENTITY_TYPE`` + ``ENTITY_ID``; null when there is none."""
    query = upper_keys(params)
    entity_type, entity_id = query.get("ENTITY_TYPE"), query.get("ENTITY_ID")
    if not entity_type or entity_id in (None, ""):
        return None
    chats = docstore.find(
        ctx.portal.store, CHAT, ENTITY_TYPE=str(entity_type), ENTITY_ID=str(entity_id)
    )
    return {"ID": int(chats[0]["ID"])} if chats else None


def _chat_for_member(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any] | None:
    chat_id = arg(params, "CHAT_ID")
    if positive_int(chat_id) is None:
        raise PortalError("CHAT_ID_EMPTY", "Chat ID can't be empty")
    chat = find_chat(ctx, chat_id)
    if chat is None:
        raise PortalError("ACCESS_ERROR", "Action unavailable")
    return chat if ctx.auth.user_id in chat["USERS"] else None


@method("im.chat.user.list", scope="im")
def chat_user_list(ctx: CallContext, params: dict[str, Any]) -> list[int]:
    """Member ids; an empty list for a caller who may not see them (im-chat-user-list.md)."""
    chat = _chat_for_member(ctx, params)
    return list(chat["USERS"]) if chat else []


@method("im.chat.user.add", scope="im")
def chat_user_add(ctx: CallContext, params: dict[str, Any]) -> bool:
    chat = _chat_for_member(ctx, params)
    if chat is None:
        raise PortalError("ACCESS_ERROR", "Action unavailable")
    added = _known_users(ctx, arg(params, "USERS"))
    chat["USERS"] = list(dict.fromkeys([*chat["USERS"], *added]))
    docstore.put(ctx.portal.store, CHAT, int(chat["ID"]), chat)
    return True


def _notify(ctx: CallContext, params: dict[str, Any], kind: str) -> int | bool:
    query = upper_keys(params)
    user_id = positive_int(query.get("USER_ID"))
    if user_id is None:
        raise PortalError("USER_ID_EMPTY", "User ID can't be empty")
    text = str(query.get("MESSAGE") or "").strip()
    if not text:
        raise PortalError("MESSAGE_EMPTY", "Message can't be empty")
    if find_user(ctx.portal.store, user_id) is None:
        return False  # "If the notification was not created, it may return false"
    app = ctx.auth.client_id or str(query.get("CLIENT_ID") or "")
    tag = str(query.get("TAG") or "") if app else ""
    note = {
        "TYPE": kind,
        "USER_ID": user_id,
        "AUTHOR_ID": 0 if kind == "system" else ctx.auth.user_id,
        "MESSAGE": text,
        "MESSAGE_OUT": str(query.get("MESSAGE_OUT") or ""),
        "TAG": tag,
        "SUB_TAG": str(query.get("SUB_TAG") or "") if app else "",
        "APP": app,
        "DATE": int(time.time()),
    }
    store = ctx.portal.store
    with store.transaction():
        if tag:
            for old in docstore.find(store, NOTIFY, TAG=tag, APP=app):
                docstore.remove(store, NOTIFY, int(old["ID"]))
        return int(docstore.add(store, NOTIFY, note)["ID"])


@method("im.notify.system.add", scope="im")
def notify_system_add(ctx: CallContext, params: dict[str, Any]) -> int | bool:
    return _notify(ctx, params, "system")


@method("im.notify.personal.add", scope="im")
def notify_personal_add(ctx: CallContext, params: dict[str, Any]) -> int | bool:
    return _notify(ctx, params, "personal")
