"""The sandbox's OAuth token server and access-token check (protocol.md section 8).

Tokens live in memory for the life of the sandbox. Rotation is strict: a refresh token works
once, exactly the reading of the docs that breaks clients which refresh twice in parallel or lose
the new token, which is what the sandbox exists to catch. ``reset`` brings back the pair printed
at start so every test begins from the credentials the fixture knows.

The one app acts as ``config.oauth_user_id``, read at each call, so a test can switch every
current token to a non-admin user with admin ``settings`` and switch it back.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .config import Credentials, SandboxConfig
from .errors import PortalError

#: Refresh tokens live 180 days (protocol.md section 8).
REFRESH_LIFETIME_S = 180 * 24 * 3600
#: Access tokens expired longer than this are forgotten (then they answer invalid_token).
PURGE_AFTER_S = 24 * 3600


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison, so a wrong secret leaks nothing through timing."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class TokenError(Exception):
    """A token-server refusal: ``{"error": code, "error_description": ...}`` with HTTP 400."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


class OAuthServer:
    """Issues, checks, rotates and expires tokens for the sandbox's one OAuth app."""

    def __init__(self, credentials: Credentials, config: Callable[[], SandboxConfig]) -> None:
        self._credentials = credentials
        self._config = config
        self._lock = threading.Lock()
        self.initial_access = secrets.token_hex(32)
        self.initial_refresh = secrets.token_hex(32)
        # token -> unix time it expires
        self._access: dict[str, float] = {}
        self._refresh: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every token and re-issue the start pair with a fresh lifetime."""
        now = time.time()
        with self._lock:
            self._access = {self.initial_access: now + self._config().token_lifetime_s}
            self._refresh = {self.initial_refresh: now + REFRESH_LIFETIME_S}

    def authenticate(self, token: str) -> int:
        """The user behind an access token, or 401 invalid_token / expired_token."""
        with self._lock:
            expires_at = self._access.get(token)
        if expires_at is None:
            raise PortalError("invalid_token", "The access token provided is invalid.", 401)
        if expires_at <= time.time():
            raise PortalError("expired_token", "The access token provided has expired.", 401)
        return self._config().oauth_user_id

    def expire_all(self) -> int:
        """Make every current access token expired (refresh tokens stay usable)."""
        with self._lock:
            now = time.time()
            self._access = {token: min(at, now) for token, at in self._access.items()}
            return len(self._access)

    def refresh(self, params: Mapping[str, Any], portal_url: str) -> dict[str, Any]:
        """Answer ``grant_type=refresh_token``; a refresh token is spent by its first use."""
        if params.get("grant_type") != "refresh_token":
            raise TokenError("invalid_request", "grant_type must be refresh_token")
        client_id = str(params.get("client_id") or "")
        client_secret = str(params.get("client_secret") or "")
        token = str(params.get("refresh_token") or "")
        if not token:
            raise TokenError("invalid_request", "refresh_token is required")
        creds = self._credentials
        if not (_same(client_id, creds.client_id) and _same(client_secret, creds.client_secret)):
            raise TokenError("invalid_client", "Invalid client credentials")
        now = time.time()
        config = self._config()
        lifetime = config.token_lifetime_s
        with self._lock:
            refresh_expires = self._refresh.pop(token, None)
            if refresh_expires is None or refresh_expires <= now:
                raise TokenError("invalid_grant", "Invalid refresh token")
            # Long-dead tokens are dropped; recently expired ones must still say expired_token.
            horizon = now - PURGE_AFTER_S
            self._access = {t: at for t, at in self._access.items() if at > horizon}
            access, refresh = self._mint(now)
        return {
            "access_token": access,
            "expires": int(now + lifetime),
            "expires_in": lifetime,
            "scope": ",".join(sorted(config.app_scopes)),
            "domain": portal_url.split("://", 1)[-1],
            "server_endpoint": f"{portal_url}/rest/",
            "status": "L",
            "client_endpoint": f"{portal_url}/rest/",
            "member_id": self._credentials.member_id,
            "user_id": config.oauth_user_id,
            "refresh_token": refresh,
        }

    def issue(self) -> tuple[str, str]:
        """A fresh (access, refresh) pair for an event that hands the app long-term access
        (events/index.md, "Parameter auth": OnAppInstall, onOfflineEvent)."""
        with self._lock:
            return self._mint(time.time())

    def _mint(self, now: float) -> tuple[str, str]:
        """A new working pair; the caller holds the lock."""
        access, refresh = secrets.token_hex(32), secrets.token_hex(32)
        self._access[access] = now + self._config().token_lifetime_s
        self._refresh[refresh] = now + REFRESH_LIFETIME_S
        return access, refresh
