"""``b24-mcp --http HOST:PORT``: streamable HTTP on a loopback address, behind a bearer token.

Over stdio only the process that started the server can talk to it. Over HTTP anything that can
reach the port can, so: the address must be loopback (127.0.0.1, ::1, localhost), the operator's
``B24_MCP_TOKEN`` (32+ characters) is required and every request must carry it as
``Authorization: Bearer``, compared in constant time (the SDK's bearer middleware answers 401
otherwise), and the SDK's DNS-rebinding protection (Host and Origin must be loopback) stays on.
Without a token the server refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

from ..errors import ConfigError, UsageError
from ..redact import MASK

__all__ = ["MIN_TOKEN_CHARS", "BearerToken", "auth_settings", "loopback_address", "token_of"]

MIN_TOKEN_CHARS = 32


class BearerToken(TokenVerifier):
    """Accepts exactly the operator's token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode("utf-8"), self._token):
            return AccessToken(token=MASK, client_id="b24-mcp-bearer", scopes=[])
        return None


def loopback_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); only loopback hosts pass."""
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if port is None or not host:
        raise UsageError(
            f"--http wants HOST:PORT, got {text!r}",
            code="USAGE",
            hint="e.g. --http 127.0.0.1:8765",
        )
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--http serves only on a loopback address, not {host}",
            code="HTTP_NOT_LOOPBACK",
            hint="use 127.0.0.1, ::1 or localhost; reach it from elsewhere through an SSH tunnel",
        )
    return host, port


def token_of(configured: str | None) -> str:
    """The operator's bearer token, or a refusal to serve HTTP without one."""
    if configured is None or len(configured) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"--http needs B24_MCP_TOKEN, a secret of {MIN_TOKEN_CHARS}+ characters that every "
            "HTTP client must present; it is " + ("not set" if configured is None else "too short"),
            code="MCP_TOKEN_MISSING",
            hint="the operator sets B24_MCP_TOKEN in the server's environment, e.g. from "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))', and gives the MCP "
            "client the same value for its Authorization header",
        )
    return configured


def auth_settings(host: str, port: int) -> AuthSettings:
    """The SDK wants an issuer for its bearer middleware; the token has no other issuer than us."""
    netloc = f"[{host}]" if ":" in host else host
    return AuthSettings(issuer_url=f"http://{netloc}:{port}", resource_server_url=None)
