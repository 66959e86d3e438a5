"""Event handler registration: ``event.bind``, ``event.unbind``, ``event.get`` and ``events``
(api-reference/events/event-bind.md, event-unbind.md, event-get.md, events.md).

All need OAuth application auth (the registry's ``app_only`` answers a webhook 403
WRONG_AUTH_TYPE). A non-admin may bind online handlers for itself only; offline bindings and
``auth_type`` of another user need an administrator, as the docs' error tables say. Binding the
same handler twice is refused with the vendor's "Handler already binded".
"""

from __future__ import annotations

from typing import Any

from ...encoding import php_truthy
from ..context import CallContext
from ..errors import PortalError, argument_error
from ..events import EVENTS_BY_SCOPE, OFFLINE_NOTICE
from ..registry import method


def _upper(params: dict[str, Any]) -> dict[str, Any]:
    return {key.upper(): value for key, value in params.items()}


def _app(ctx: CallContext) -> str:
    return ctx.auth.client_id or ""


def _connector(ctx: CallContext) -> str:
    return ctx.auth_connector or ""


def _event_type(query: dict[str, Any]) -> str:
    event_type = str(query.get("EVENT_TYPE") or "online").lower()
    if event_type not in ("online", "offline"):
        raise argument_error("Value must be one of {online|offline}", "EVENT_TYPE")
    return event_type


def _event_name(query: dict[str, Any]) -> str:
    name = str(query.get("EVENT") or "").strip().upper()
    if not name:
        raise argument_error("Argument 'EVENT' is null or empty", "EVENT")
    return name


def _denied(text: str) -> PortalError:
    return PortalError("ACCESS_DENIED", f"Access denied! {text}", 403)


def _requested_user(query: dict[str, Any]) -> int:
    try:
        return max(int(str(query.get("AUTH_TYPE") or 0)), 0)
    except ValueError:
        raise argument_error("AUTH_TYPE must be a user ID", "AUTH_TYPE") from None


def _bind_user(ctx: CallContext, query: dict[str, Any]) -> int:
    """The user a handler is bound for (0: whoever raised the event). An admin may name anyone
    in ``auth_type``; anyone else binds for themselves (event-bind.md)."""
    requested = _requested_user(query)
    if requested:
        if not ctx.auth.is_admin and requested != ctx.auth.user_id:
            raise _denied("Event binding with AUTH_TYPE requires administrator access rights")
        return requested
    return 0 if ctx.auth.is_admin else ctx.auth.user_id


def _available(ctx: CallContext) -> list[str]:
    scopes = {"basic", *ctx.auth.scopes}
    return [name for scope, names in EVENTS_BY_SCOPE.items() if scope in scopes for name in names]


@method("event.bind", scope="basic", app_only=True)
def bind(ctx: CallContext, params: dict[str, Any]) -> bool:
    query = _upper(params)
    name = _event_name(query)
    event_type = _event_type(query)
    user_id = _bind_user(ctx, query)
    handler = str(query.get("HANDLER") or "").strip()
    if event_type == "offline":
        if not ctx.auth.is_admin:
            raise _denied("Offline events binding requires administrator access rights")
        handler, user_id = "", 0
    elif not handler:
        raise argument_error("Argument 'HANDLER' is null or empty", "HANDLER")
    if name not in _available(ctx):
        raise PortalError("ERROR_EVENT_NOT_FOUND", "Event not found")
    if name == OFFLINE_NOTICE and event_type == "offline":
        raise argument_error("Offline event cannot be registered for this event.", "EVENT")
    added = ctx.portal.store.add_binding(_app(ctx), name, handler, _connector(ctx), user_id)
    if added is None:
        raise PortalError("ERROR_CORE", "Unable to set event handler: Handler already binded")
    return True


@method("event.unbind", scope="basic", app_only=True)
def unbind(ctx: CallContext, params: dict[str, Any]) -> dict[str, int]:
    query = _upper(params)
    name = _event_name(query)
    event_type = _event_type(query)
    store = ctx.portal.store
    if event_type == "offline":
        if not ctx.auth.is_admin:
            raise _denied("Offline events unbinding requires administrator access rights")
        count = store.delete_bindings(_app(ctx), name, "", connector=_connector(ctx))
        return {"count": count}
    handler = str(query.get("HANDLER") or "").strip()
    if not handler:
        raise argument_error("Argument 'HANDLER' is null or empty", "HANDLER")
    user_id: int | None = None
    if "AUTH_TYPE" in query:
        # event-unbind.md: auth_type=0 (or empty) removes only handlers bound without one.
        user_id = _requested_user(query)
        if not ctx.auth.is_admin and user_id != ctx.auth.user_id:
            raise _denied("Event unbinding with AUTH_TYPE requires administrator access rights")
    elif not ctx.auth.is_admin:
        user_id = ctx.auth.user_id
    return {"count": store.delete_bindings(_app(ctx), name, handler, user_id=user_id)}


@method("event.get", scope="basic", app_only=True)
def get(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """This app's handlers (a non-admin sees only its own), as event-get.md lists them."""
    user_id = None if ctx.auth.is_admin else ctx.auth.user_id
    result: list[dict[str, Any]] = []
    for binding in ctx.portal.store.bindings(app=_app(ctx), user_id=user_id):
        if binding["handler"]:
            result.append(
                {
                    "event": binding["event"],
                    "handler": binding["handler"],
                    "auth_type": str(binding["user_id"]),
                    "offline": 0,
                }
            )
        else:
            result.append(
                {"event": binding["event"], "connector_id": binding["connector"], "offline": 1}
            )
    return result


@method("events", scope="basic", app_only=True)
def events(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    """Event names: of ``SCOPE``, of every scope with ``FULL``, else those the app may bind."""
    query = _upper(params)
    scope = query.get("SCOPE")
    if scope:
        return list(EVENTS_BY_SCOPE.get(str(scope), ()))
    if php_truthy(query.get("FULL")):
        return [name for names in EVENTS_BY_SCOPE.values() for name in names]
    return _available(ctx)
