"""REST 3.0 methods of the platform itself (api-reference/rest-v3.md): ``batch`` in its JSON
array form, ``rest.documentation.openapi`` (synonym ``documentation``) and ``rest.scope.list``.

They answer from the live method registry, so the OpenAPI document lists exactly the REST 3.0
methods this sandbox serves, and ``rest.scope.list`` the scope each served method needs.
"""

from __future__ import annotations

import json
from typing import Any

from ..context import CallContext
from ..envelope import unwrap
from ..errors import PortalError
from ..faults import RawAnswer
from ..portal import normalize_method
from ..registry import all_methods, method
from ..v3 import PREFIX

MAX_CALLS = 50


def _calls(params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[{"method", "query"}, ...]`` at the root of the body; the v2 ``cmd`` form is refused
    as the docs say (INVALIDSELECTEXCEPTION)."""
    calls = params.get("calls")
    if not isinstance(calls, list):
        raise PortalError(
            PREFIX + "INVALIDSELECTEXCEPTION",
            "The REST 3.0 batch body is a JSON array of {method, query} objects",
        )
    if not calls or len(calls) > MAX_CALLS:
        raise PortalError(
            PREFIX + "VALIDATION_REQUESTVALIDATIONEXCEPTION",
            f"A batch holds 1 to {MAX_CALLS} calls",
        )
    parsed = []
    for call in calls:
        name = call.get("method") if isinstance(call, dict) else None
        query = call.get("query", {}) if isinstance(call, dict) else None
        if not isinstance(name, str) or not isinstance(query, dict):
            raise PortalError(
                PREFIX + "VALIDATION_REQUESTVALIDATIONEXCEPTION",
                "Each batch call is an object with a string `method` and an object `query`",
            )
        if normalize_method(name) == "batch":
            raise PortalError(
                "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage", 405
            )
        parsed.append((name, query))
    return parsed


@method("batch", scope="basic", api="v3")
def batch_v3(ctx: CallContext, params: dict[str, Any]) -> list[Any]:
    """Calls in order; ``result`` is the list of their results. All or nothing on the wire: the
    first failing call fails the whole request with its own error (what the vendor's JS SDK
    expects; calls before it have run)."""
    results = []
    for name, query in _calls(params):
        value, _ = ctx.portal.timed_dispatch(ctx, name, dict(query))
        results.append(unwrap(value))
    return results


def _openapi() -> dict[str, Any]:
    specs = all_methods("v3")
    tags = sorted({s.name.split(".", 1)[0] for s in specs})
    return {
        "openapi": "3.0.0",
        "info": {"title": "Bitrix24 REST V3 API", "version": "1.0.0"},
        "tags": [{"name": tag, "description": f"{tag} module methods"} for tag in tags],
        "paths": {f"/{s.name}": {} for s in specs},
        "components": {"schemas": {}},
    }


def _openapi_answer(ctx: CallContext, params: dict[str, Any]) -> Any:
    """The OpenAPI document itself is the body (rest-v3.md shows no ``result`` around it)."""
    raise RawAnswer(200, json.dumps(_openapi()).encode("utf-8"), "application/json; charset=utf-8")


method("rest.documentation.openapi", scope="basic", api="v3")(_openapi_answer)
method("documentation", scope="basic", api="v3")(_openapi_answer)


@method("rest.scope.list", scope="basic", api="v3")
def scope_list(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """Method-to-scope mapping of every served method (both versions, named once). The docs
    give no example answer; it follows the unified list format (``items``)."""
    scopes: dict[str, str] = {}
    for spec in all_methods():
        scopes.setdefault(spec.name, spec.scope)
    return {"items": [{"method": name, "scope": scope} for name, scope in sorted(scopes.items())]}
