"""Messages: ``im.message.add`` (api-reference/chats/messages/im-message-add.md).

The sandbox keeps what was sent so a test (or an agent rehearsing a workflow) can check it
through the admin ``messages`` operation; nobody receives anything.
"""

from __future__ import annotations

import re
from typing import Any

from .. import docstore
from ..admin import admin_op
from ..context import CallContext
from ..errors import PortalError
from ..registry import method
from .chats import CHAT
from .users import user_exists

#: ``chatXXX`` (chat), ``sgXXX`` (group chat) or ``XXX`` (a user's personal chat).
_DIALOG = re.compile(r"(chat|sg)?([1-9][0-9]*)")


@method("im.message.add", scope="im")
def message_add(ctx: CallContext, params: dict[str, Any]) -> int:
    upper = {key.upper(): value for key, value in params.items()}
    dialog = str(upper.get("DIALOG_ID") or "").strip()
    match = _DIALOG.fullmatch(dialog)
    if match is None:
        raise PortalError("USER_ID_EMPTY", "User ID can't be empty")
    if match.group(1) is None and not user_exists(ctx.portal.store, int(match.group(2))):
        raise PortalError("USER_NOT_FOUND", "User not found")
    if match.group(1) is not None:
        _check_chat(ctx, match.group(2))
    text = upper.get("MESSAGE")
    text = "" if text is None else str(text)
    if not text.strip() and not upper.get("ATTACH"):
        raise PortalError("MESSAGE_EMPTY", "Message can't be empty")
    system = str(upper.get("SYSTEM") or "N").upper() == "Y"
    return ctx.portal.store.add_message(dialog, ctx.auth.user_id, text, system)


def _check_chat(ctx: CallContext, chat_id: str) -> None:
    """A group chat must exist (else ``CHAT_ID``, "Error creating message") and have the caller
    as a member (else ``ACCESS_ERROR``), as im-message-add.md lists them. Workgroup chats
    (``sg``) are not kept by the sandbox, so they never exist here."""
    chat = docstore.get(ctx.portal.store, CHAT, int(chat_id))
    if chat is None:
        raise PortalError("CHAT_ID", "Error creating message")
    if ctx.auth.user_id not in chat["USERS"]:
        raise PortalError("ACCESS_ERROR", "Action unavailable")


@admin_op("POST", "messages")
def _messages(portal: Any, payload: dict[str, Any]) -> Any:
    """Messages sent so far, oldest first; ``dialog_id`` narrows to one dialog."""
    dialog = payload.get("dialog_id")
    return {"messages": portal.store.messages(str(dialog) if dialog else None)}
