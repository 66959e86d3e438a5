"""System methods of scope ``basic`` (api-reference/common/system/*.md): server.time, scope,
method.get, methods, app.info, feature.get. Clients use them to probe what a portal offers, so
they answer from the live registry and settings rather than from fixed lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...encoding import php_truthy
from ..config import DEFAULT_SCOPES
from ..context import AuthInfo, CallContext
from ..errors import PortalError
from ..portal import normalize_method
from ..registry import MethodSpec, all_methods, lookup, method

#: app.info LICENSE per sandbox plan: (LICENSE, LICENSE_TYPE, LICENSE_FAMILY).
LICENSES = {
    "standard": ("en_std", "std", "std"),
    "enterprise": ("en_ent250", "ent250", "ent"),
    "unlimited": ("en_ent10000", "ent10000", "ent"),
}


def _available(spec: MethodSpec, auth: AuthInfo) -> bool:
    if spec.app_only and auth.kind != "oauth":
        return False
    if spec.admin_only and not auth.is_admin:
        return False
    return spec.scope == "basic" or spec.scope in auth.scopes


@method("server.time", scope="basic")
def server_time(ctx: CallContext, params: dict[str, Any]) -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


@method("scope", scope="basic")
def scope(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    """The caller's scopes; ``full=true`` lists every scope the portal knows."""
    if php_truthy(params.get("full")):
        known = set(DEFAULT_SCOPES) | {s.scope for s in all_methods()}
        return sorted(known - {"basic"})
    return sorted(ctx.auth.scopes)


@method("method.get", scope="basic")
def method_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, bool]:
    name = params.get("name")
    spec = lookup(ctx.api, normalize_method(name)) if isinstance(name, str) and name else None
    return {
        "isExisting": spec is not None,
        "isAvailable": spec is not None and _available(spec, ctx.auth),
    }


@method("methods", scope="basic")
def methods(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    """``full=true``: every method; ``scope=X``: methods of scope X (empty: the common ones);
    no parameters: the methods this caller may call."""
    specs = all_methods(ctx.api)
    if php_truthy(params.get("full")):
        return [s.name for s in specs]
    if "scope" in params:
        wanted = str(params["scope"] or "basic")
        return [s.name for s in specs if s.scope == wanted]
    return [s.name for s in specs if _available(s, ctx.auth)]


@method("app.info", scope="basic")
def app_info(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """A webhook sees its scopes and the plan; an app sees its installation record."""
    license_, license_type, family = LICENSES[ctx.portal.config.plan]
    if ctx.auth.kind == "webhook":
        return {"SCOPE": sorted(ctx.auth.scopes), "LICENSE": license_}
    return {
        "ID": 1,
        "CODE": ctx.auth.client_id,
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": True,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": "en",
        "LICENSE": license_,
        "LICENSE_TYPE": license_type,
        "LICENSE_FAMILY": family,
    }


@method("feature.get", scope="basic")
def feature_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, str]:
    code = params.get("CODE")
    if not isinstance(code, str) or not code:
        raise PortalError("CODE_EMPTY", "CODE can't be empty", 400)
    return {"value": "Y" if code in ctx.portal.config.features else "N"}
