"""Which sandbox methods exist, under which API version and scope, and who handles them.

Method modules register handlers with the ``method`` decorator at import time; the server looks
them up by ``(api, lower-case name)``. v2 and v3 keep separate tables because the same name
(``tasks.task.add``) answers in different shapes on ``/rest/`` and ``/rest/api/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import CallContext

Handler = Callable[["CallContext", dict[str, Any]], Any]


@dataclass(frozen=True)
class MethodSpec:
    """A served method. ``scope`` "basic" is never checked; ``app_only`` rejects webhooks with
    WRONG_AUTH_TYPE (``event.*``); ``admin_only`` rejects non-admin users with ACCESS_DENIED."""

    name: str
    api: str
    scope: str
    handler: Handler
    app_only: bool = False
    admin_only: bool = False


_TABLE: dict[tuple[str, str], MethodSpec] = {}


def method(
    name: str,
    *,
    scope: str,
    api: str = "v2",
    app_only: bool = False,
    admin_only: bool = False,
) -> Callable[[Handler], Handler]:
    """Register ``handler`` as method ``name`` for ``api`` ("v2" or "v3")."""

    def register(handler: Handler) -> Handler:
        key = (api, name.lower())
        if key in _TABLE:
            raise RuntimeError(f"sandbox method {name} ({api}) registered twice")
        _TABLE[key] = MethodSpec(name.lower(), api, scope, handler, app_only, admin_only)
        return handler

    return register


def lookup(api: str, name: str) -> MethodSpec | None:
    """The spec for ``name`` (any case, ``.json`` suffix already stripped) or None."""
    return _TABLE.get((api, name.lower()))


def all_methods(api: str | None = None) -> list[MethodSpec]:
    """Every registered spec, optionally for one API version, sorted by name."""
    specs = [s for (a, _), s in _TABLE.items() if api is None or a == api]
    return sorted(specs, key=lambda s: (s.api, s.name))
