"""The sandbox's admin surface, ``/_sandbox/<op>``, guarded by the admin token it prints at start.

Operations are plain functions ``(portal, payload) -> JSON`` registered with ``admin_op``; the
domain modules add their own (``events-delivered``) the same way, so this file does not have to
know about them. Admin calls bypass the rate limit, faults and stats on purpose: tests use them
to set the stage and to read the score without disturbing either.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import apply_settings, settings_view
from .errors import PortalError, argument_error

if TYPE_CHECKING:
    from .portal import Portal

AdminOp = Callable[["Portal", dict[str, Any]], Any]

#: (HTTP verb, op name) -> handler.
ADMIN_OPS: dict[tuple[str, str], AdminOp] = {}


def admin_op(verb: str, name: str) -> Callable[[AdminOp], AdminOp]:
    """Register ``handler`` for ``verb /_sandbox/name``."""

    def register(handler: AdminOp) -> AdminOp:
        ADMIN_OPS[(verb.upper(), name)] = handler
        return handler

    return register


def check_token(portal: Portal, token: str) -> None:
    """403 unless ``token`` is the admin token (checked before the body is even parsed)."""
    expected = portal.credentials.admin_token.encode()
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected):
        raise PortalError("ACCESS_DENIED", "X-Sandbox-Admin header missing or wrong", 403)


def run_admin(portal: Portal, verb: str, op: str, payload: Any) -> Any:
    """Run an admin operation for a caller already past ``check_token``."""
    handler = ADMIN_OPS.get((verb, op))
    if handler is None:
        raise PortalError("ERROR_METHOD_NOT_FOUND", f"No admin operation {verb} {op}", 404)
    if not isinstance(payload, dict):
        raise argument_error("admin payload must be a JSON object", "body")
    return handler(portal, payload)


@admin_op("GET", "stats")
def _stats(portal: Portal, payload: dict[str, Any]) -> Any:
    return portal.stats.snapshot()


@admin_op("POST", "count")
def _count(portal: Portal, payload: dict[str, Any]) -> Any:
    """Payload ``{"kind": "crm.lead"}`` -> ``{"count": rows}``: how many rows a seed kind's
    table holds, read without a REST call, so a benchmark's check never touches the bucket."""
    try:
        return {"count": portal.store.count_kind(str(payload.get("kind", "")))}
    except ValueError as exc:
        raise argument_error(str(exc), "kind") from None


@admin_op("POST", "seed")
def _seed(portal: Portal, payload: dict[str, Any]) -> Any:
    """Payload ``{"<kind>": count, ...}`` goes to ``Store.seed``; no rate limit, no events."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in payload.values()):
        raise argument_error("seed counts must be integers", "body")
    try:
        return portal.store.seed(payload)
    except ValueError as exc:
        raise argument_error(str(exc), "body") from None


@admin_op("POST", "faults")
def _faults(portal: Portal, payload: dict[str, Any]) -> Any:
    return {"rules": portal.faults.set(payload.get("rules", []), payload.get("seed"))}


@admin_op("POST", "expire-tokens")
def _expire(portal: Portal, payload: dict[str, Any]) -> Any:
    return {"expired": portal.oauth.expire_all()}


@admin_op("GET", "settings")
def _get_settings(portal: Portal, payload: dict[str, Any]) -> Any:
    return settings_view(portal.config)


@admin_op("POST", "settings")
def _settings(portal: Portal, payload: dict[str, Any]) -> Any:
    try:
        apply_settings(portal.config, payload)
    except ValueError as exc:
        raise argument_error(str(exc), "settings") from None
    return settings_view(portal.config)


@admin_op("POST", "refill")
def _refill(portal: Portal, payload: dict[str, Any]) -> Any:
    """An empty request bucket and operating-time window, data and counters kept: benchmark
    runs start alike without re-seeding 100,000 rows."""
    portal.bucket.reset()
    portal.operating.reset()
    return {"refilled": True}


@admin_op("POST", "reset")
def _reset(portal: Portal, payload: dict[str, Any]) -> Any:
    portal.reset()
    return {"reset": True}
