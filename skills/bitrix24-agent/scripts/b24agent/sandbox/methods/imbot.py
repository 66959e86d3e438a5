"""Chat bots, the current API: ``imbot.v2.Bot.register``, ``imbot.v2.Command.register``,
``imbot.v2.Event.get`` and ``imbot.v2.Command.answer`` (api-reference/chat-bots/chat-bots-v2/
imbot.v2/bots/bot-register.md, commands/command-register.md, command-answer.md,
events/event-get.md). The deprecated ``imbot.register`` family is not served: its command events
can only be pushed to a public URL, while v2's ``eventMode: fetch`` lets an agent poll.

A bot is a user (its id is the new user's id), so people write to it with ``im.message.add``
(``DIALOG_ID`` = the bot's id). ``Event.get`` turns the messages of that dialog into events:
``ONIMBOTV2COMMANDADD`` for a registered ``/command``, ``ONIMBOTV2MESSAGEADD`` otherwise. Event
ids follow the message ids, so they only grow; an ``offset`` confirms every event below it.
A bot belongs to the app (OAuth) or webhook that registered it; over a webhook every call must
repeat the ``botToken`` given at registration (the sandbox keeps only its digest).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .. import docstore
from ..args import arg, flag, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..errors import PortalError
from ..registry import method
from .users import find_user, full_name

BOT, COMMAND = "imbot", "imbot_command"
_MAX_TOKEN = 40
_DEFAULT_LIMIT, _MAX_LIMIT = 100, 1000


def _owner(ctx: CallContext) -> str:
    return (
        f"app:{ctx.auth.client_id}" if ctx.auth.kind == "oauth" else f"webhook:{ctx.auth.user_id}"
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token(ctx: CallContext, raw: Any) -> str | None:
    """The bot token a webhook call must carry (OAuth calls need none)."""
    if ctx.auth.kind == "oauth":
        return None
    token = str(raw or "")
    if not token:
        raise PortalError("BOT_TOKEN_NOT_SPECIFIED", "Bot token is not specified")
    return token


def _bot(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """The caller's bot named by ``botId``, after the ownership and token checks."""
    bot_id = positive_int(arg(params, "botId"))
    if bot_id is None:
        raise PortalError("BOT_ID_REQUIRED", "Bot ID is required")
    token = _token(ctx, arg(params, "botToken"))
    bot = docstore.get(ctx.portal.store, BOT, bot_id)
    if bot is None:
        raise PortalError("BOT_NOT_FOUND", "Bot not found")
    owned = bot["OWNER"] == _owner(ctx)
    if token is not None:
        owned = owned and hmac.compare_digest(bot["TOKEN"], _digest(token))
    if not owned:
        raise PortalError("BOT_OWNERSHIP_ERROR", "Bot is registered by another application", 403)
    return bot


def _bot_view(bot: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": bot["ID"],
        "code": bot["CODE"],
        "type": bot["TYPE"],
        "isHidden": bot["HIDDEN"],
        "isSupportOpenline": False,
        "isReactionsEnabled": True,
        "backgroundId": None,
        "language": "en",
        "moduleId": "rest",
        "eventMode": bot["EVENT_MODE"],
    }


def _user_view(user: dict[str, Any], bot: bool) -> dict[str, Any]:
    return {
        "id": user["ID"],
        "active": bool(user.get("ACTIVE")),
        "name": full_name(user),
        "firstName": user.get("NAME", ""),
        "lastName": user.get("LAST_NAME", ""),
        "workPosition": user.get("WORK_POSITION", ""),
        "gender": user.get("PERSONAL_GENDER", ""),
        "bot": bot,
        "type": "bot" if bot else "user",
    }


@method("imbot.v2.bot.register", scope="imbot")
def bot_register(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    fields = arg(params, "fields")
    fields = fields if isinstance(fields, dict) else {}
    code = str(arg(fields, "code") or "").strip()
    if not code:
        raise PortalError("BOT_CODE_REQUIRED", "Bot code is required")
    token = _token(ctx, arg(fields, "botToken"))
    if token is not None and len(token) > _MAX_TOKEN:
        raise PortalError("BOT_TOKEN_INVALID_LENGTH", "Bot token is too long")
    properties = arg(fields, "properties")
    name = str(arg(properties, "name") or "").strip()
    if not name:
        raise PortalError("BOT_PROPERTIES_REQUIRED", "Bot properties are required")
    mode = str(arg(fields, "eventMode") or "fetch")
    if mode not in ("fetch", "webhook"):
        raise PortalError("BOT_INVALID_EVENT_MODE", "Invalid event mode")
    if mode == "webhook" and not arg(fields, "webhookUrl"):
        raise PortalError("BOT_WEBHOOK_URL_REQUIRED", "Webhook URL is required")
    store = ctx.portal.store
    with store.transaction():
        same = docstore.find(store, BOT, CODE=code)
        if same and same[0]["OWNER"] != _owner(ctx):
            raise PortalError("BOT_CODE_ALREADY_TAKEN", "Bot code is already taken")
        if same:  # idempotent: the existing bot, unchanged
            bot = same[0]
        else:
            user = {
                "ACTIVE": True,
                "NAME": name,
                "LAST_NAME": str(arg(properties, "lastName") or ""),
                "WORK_POSITION": str(arg(properties, "workPosition") or ""),
                "PERSONAL_GENDER": str(arg(properties, "gender") or ""),
                "USER_TYPE": "bot",
                "UF_DEPARTMENT": [],
            }
            bot_id = store.insert("users", user)
            bot = {
                "ID": bot_id,
                "CODE": code,
                "TYPE": str(arg(fields, "type") or "bot"),
                "HIDDEN": flag(arg(fields, "isHidden")),
                "EVENT_MODE": mode,
                "WEBHOOK_URL": str(arg(fields, "webhookUrl") or ""),
                "OWNER": _owner(ctx),
                "TOKEN": _digest(token) if token is not None else "",
                "ACKED": 0,
            }
            docstore.put(store, BOT, bot_id, bot)
    user_record = find_user(store, int(bot["ID"])) or {"ID": bot["ID"]}
    return {"bot": _bot_view(bot), "users": [_user_view(user_record, True)]}


def _command_view(command: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": command["ID"],
        "botId": command["BOT_ID"],
        "command": "/" + command["COMMAND"],
        "common": command["COMMON"],
        "hidden": command["HIDDEN"],
        "extranetSupport": command["EXTRANET"],
    }


@method("imbot.v2.command.register", scope="imbot")
def command_register(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    bot = _bot(ctx, params)
    fields = arg(params, "fields")
    fields = fields if isinstance(fields, dict) else params  # the old flat format
    text = str(arg(fields, "command") or "").strip().lstrip("/")
    if not text or not text.replace("_", "").isalnum():
        raise PortalError("COMMAND_REGISTER_FAILED", "Command is not valid")
    hidden = flag(arg(fields, "hidden"))
    if not hidden and not upper_keys(arg(fields, "title")):
        raise PortalError("COMMAND_REGISTER_FAILED", "A visible command needs a title")
    store = ctx.portal.store
    with store.transaction():
        same = docstore.find(store, COMMAND, BOT_ID=bot["ID"], COMMAND=text.lower())
        command = (
            same[0]
            if same
            else docstore.add(
                store,
                COMMAND,
                {
                    "BOT_ID": bot["ID"],
                    "COMMAND": text.lower(),
                    "TITLE": arg(fields, "title") or {},
                    "PARAMS": arg(fields, "params") or {},
                    "COMMON": flag(arg(fields, "common")),
                    "HIDDEN": hidden,
                    "EXTRANET": flag(arg(fields, "extranetSupport")),
                },
            )
        )
    return {"command": _command_view(command)}


def _commands(ctx: CallContext, bot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["COMMAND"]: c for c in docstore.find(ctx.portal.store, COMMAND, BOT_ID=bot["ID"])}


def _invoked(text: str, commands: dict[str, dict[str, Any]]) -> tuple[dict, str] | None:
    """The registered command a message starts with, and the text after it."""
    if not text.startswith("/"):
        return None
    word, _, rest = text[1:].partition(" ")
    command = commands.get(word.lower())
    return (command, rest.strip()) if command else None


def _event(ctx: CallContext, bot: dict[str, Any], message: dict[str, Any], commands: dict) -> dict:
    author = find_user(ctx.portal.store, int(message["author_id"])) or {"ID": message["author_id"]}
    data: dict[str, Any] = {
        "bot": _bot_view(bot),
        "message": {
            "id": message["id"],
            "chatId": 0,
            "authorId": message["author_id"],
            "date": iso_datetime(message["created"]),
            "text": message["text"],
            "isSystem": message["system"] == "Y",
            "uuid": "",
            "forward": None,
            "params": {},
            "viewedByOthers": False,
        },
        "chat": {"id": 0, "dialogId": str(message["author_id"]), "type": "private"},
        "user": _user_view(author, False),
        "language": "en",
    }
    invoked = _invoked(message["text"], commands)
    if invoked:
        command, rest = invoked
        data["command"] = {
            "id": command["ID"],
            "command": "/" + command["COMMAND"],
            "params": rest,
            "context": "textarea",
        }
    return {
        "eventId": int(message["id"]),
        "type": "ONIMBOTV2COMMANDADD" if invoked else "ONIMBOTV2MESSAGEADD",
        "date": iso_datetime(message["created"]),
        "data": data,
    }


@method("imbot.v2.event.get", scope="imbot")
def event_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    bot = _bot(ctx, params)
    limit = positive_int(arg(params, "limit")) or _DEFAULT_LIMIT
    limit = min(limit, _MAX_LIMIT)
    store = ctx.portal.store
    with store.transaction():
        acked = max(int(bot["ACKED"]), positive_int(arg(params, "offset")) or 0)
        if acked != bot["ACKED"]:
            bot["ACKED"] = acked
            docstore.put(store, BOT, int(bot["ID"]), bot)
    commands = _commands(ctx, bot)
    pending = [
        m
        for m in store.messages(str(bot["ID"]))
        if m["id"] >= acked and int(m["author_id"]) != int(bot["ID"])
    ]
    events = [_event(ctx, bot, m, commands) for m in pending[:limit]]
    following = events[-1]["eventId"] + 1 if events else acked
    return {"events": events, "nextOffset": following, "hasMore": len(pending) > limit}


@method("imbot.v2.command.answer", scope="imbot")
def command_answer(ctx: CallContext, params: dict[str, Any]) -> dict[str, bool]:
    bot = _bot(ctx, params)
    commands = {c["ID"]: c for c in _commands(ctx, bot).values()}
    command = commands.get(positive_int(arg(params, "commandId")) or 0)
    message_id = positive_int(arg(params, "messageId"))
    message = next((m for m in ctx.portal.store.messages() if m["id"] == message_id), None)
    dialog = str(arg(params, "dialogId") or "").strip()
    fields = arg(params, "fields")
    text = str(arg(fields, "message") or "").strip()
    invoked = (
        _invoked(message["text"], {command["COMMAND"]: command}) if message and command else None
    )
    if not (invoked and dialog and (text or arg(fields, "attach"))):
        raise PortalError("COMMAND_ANSWER_FAILED", "Command answer failed")
    ctx.portal.store.add_message(dialog, int(bot["ID"]), text, flag(arg(fields, "system")))
    return {"result": True}
