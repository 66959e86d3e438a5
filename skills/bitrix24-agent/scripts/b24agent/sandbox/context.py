"""What a sandbox method handler knows about the call it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .portal import Portal


@dataclass(frozen=True)
class AuthInfo:
    """Who is calling. ``client_id`` is the OAuth app (None for a webhook)."""

    kind: Literal["webhook", "oauth"]
    user_id: int
    scopes: frozenset[str]
    client_id: str | None = None
    is_admin: bool = True


@dataclass
class CallContext:
    """One method call. Handlers read and write the portal through ``portal``; ``auth_connector``
    is the request's ``auth_connector`` parameter (changes made with the connector an offline
    binding names are not queued for it); ``idempotency_key`` is the v3 header, if any."""

    portal: Portal
    auth: AuthInfo
    api: str = "v2"
    auth_connector: str | None = None
    idempotency_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, name: str, params: dict[str, Any]) -> Any:
        """Run another method with this caller's auth (used by ``batch``); raises PortalError."""
        return self.portal.dispatch(self, name, params)
