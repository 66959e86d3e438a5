"""Credentials for each request: webhook (secret in the path) or OAuth (the access token in
the ``auth`` body field, the way the docs pass it everywhere: rest-v3.md "pass the authorization
token in the ``auth`` field in the request body"; a Bearer header appears only in a few examples
and a portal need not read it).

OAuth refresh tokens are single-use, so the token store is the one copy of the truth and every
process shares it: on one machine ``state_dir/oauth-<client_id>.json`` (mode 0600), on a fleet
the Redis state backend (backends/):

* Refresh only after a call failed with ``expired_token``, holding the store's refresh lease (the
  file lock; in Redis a lease with a fencing token), and first re-read the store: if its access
  token is no longer the one that failed, another thread, process or host already rotated it,
  so use that instead of spending the refresh token again.
* The new pair is stored before the new access token is used, so a crash can lose at most the
  answer in flight, never a token we already relied on; the store makes sure it can keep the
  successor before the refresh token is spent (backends/file.py: room reserved on disk, a
  pending file if the replace still fails). A holder whose lease lapsed cannot overwrite a
  newer pair: the store refuses it, and the holder uses the stored pair.
* Environment tokens seed the store once. The store remembers which env pair seeded it
  (``env_seed``) and hashes of every token rotated away (``spent``); env values matching either
  are stale and never overwrite newer stored tokens. Only a pair never seen before (the user
  re-authorised the app) replaces the store.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from filelock import Timeout as LockTimeout

from ..backends import open_backend
from ..backends.base import TokenHold
from ..encoding import loads_strict
from ..errors import AuthError, ConfigError, CorruptStateError, TransientError, error_from_portal
from ..settings import Settings
from . import deadline
from .answers import read_capped
from .schemas import load_schema

__all__ = ["Credential", "OAuthAuth", "WebhookAuth", "make_auth"]

#: How many rotated-away token hashes the store keeps to recognise stale env values.
SPENT_KEEP = 64
#: A token server's answer is a token pair of a few hundred bytes; past this it is refused
#: unread (answers.py), not decoded into memory.
TOKEN_ANSWER_MAX = 1024 * 1024


@dataclass(frozen=True)
class Credential:
    """What one request carries: a path prefix after ``/rest/`` and ``token``, the OAuth access
    token sent as the ``auth`` body field (also compared on expiry to tell whether someone else
    already refreshed)."""

    path_prefix: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


class WebhookAuth:
    """An incoming webhook: user id and code in the path, nothing to refresh."""

    kind = "webhook"

    def __init__(self, settings: Settings) -> None:
        self._prefix = f"{settings.webhook_user_id}/{settings.webhook_code}/"
        self.identity = f"webhook:{settings.webhook_user_id}"

    def credential(self) -> Credential:
        return Credential(self._prefix)

    def refresh(self, failed: Credential) -> None:
        raise AuthError(
            "the portal reports an expired token on a webhook call",
            code="expired_token",
            hint="webhooks do not expire; check B24_AUTH_MODE and B24_WEBHOOK_URL",
        )


def _digest(*values: str | None) -> str:
    return hashlib.sha256("\0".join(v or "" for v in values).encode("utf-8")).hexdigest()


def token_store_path(settings: Settings) -> Path:
    """Per portal (state_dir) and per app: two apps on one portal have separate tokens."""
    client = re.sub(r"[^A-Za-z0-9._-]", "_", settings.client_id or "default")
    return settings.state_dir / f"oauth-{client}.json"


class OAuthAuth:
    """OAuth app credentials backed by the shared token store (see the module docstring)."""

    kind = "oauth"

    def __init__(
        self,
        settings: Settings,
        session: requests.Session,
        on_secret: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._on_secret = on_secret
        self._path = token_store_path(settings)
        self._tokens = open_backend(settings).tokens(
            self._path.stem, path=self._path, schema=load_schema("token-store")
        )
        self._lock = threading.Lock()
        self._current: dict[str, Any] | None = None
        self._seen: object = None
        self.identity = f"app:{settings.client_id}"
        self.refreshes = 0

    # -- reading the store ----------------------------------------------------------------

    def _adopt(self, data: dict[str, Any]) -> dict[str, Any]:
        self._current = data
        self._on_secret(data["access_token"])
        self._on_secret(data["refresh_token"])
        self._seen = self._tokens.stamp()
        return data

    def _load(self) -> dict[str, Any]:
        """Open the store (seeding or reseeding it from the environment when that is right)."""
        with self._guard():
            data = self._tokens.update(self._reconcile)
        return self._adopt(data)

    def _reconcile(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        env_access, env_refresh = self._settings.access_token, self._settings.refresh_token
        env_seed = _digest(env_access, env_refresh) if (env_access or env_refresh) else None
        if stored is None:
            if not env_access:
                raise ConfigError(
                    f"no OAuth tokens: B24_ACCESS_TOKEN is not set and {self._path} does not exist",
                    code="CONFIG_MISSING",
                    hint="set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN from the app's authorisation",
                )
            return self._record(env_access, env_refresh or "", env_seed=env_seed, spent=[])
        known = {stored["env_seed"], *stored["spent"]}
        if env_seed is None or env_seed in known or not env_access:
            return stored
        if _digest(env_access) in known or _digest(env_refresh) in known:
            return stored  # an older pair: the store has rotated past it
        if env_access == stored["access_token"]:
            return {**stored, "env_seed": env_seed}
        # A pair never seen before: the app was authorised again; it replaces the store.
        spent = [
            *stored["spent"],
            _digest(stored["access_token"]),
            _digest(stored["refresh_token"]),
        ]
        return self._record(env_access, env_refresh or "", env_seed=env_seed, spent=spent)

    @staticmethod
    def _record(
        access: str,
        refresh: str,
        *,
        env_seed: str | None,
        spent: list[str],
        answer: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        answer = answer or {}
        expires = answer.get("expires")
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires": expires if isinstance(expires, int) else None,
            "updated_at": time.time(),
            "client_endpoint": answer.get("client_endpoint")
            if isinstance(answer.get("client_endpoint"), str)
            else None,
            "member_id": answer.get("member_id")
            if isinstance(answer.get("member_id"), str)
            else None,
            "env_seed": env_seed,
            "spent": spent[-SPENT_KEEP:],
        }

    def _guard(self) -> _StoreGuard:
        return _StoreGuard(self._path, self._lock)

    def _fresh(self, current: dict[str, Any]) -> dict[str, Any]:
        """Pick up a rotation another process wrote (one stat per call) to skip a doomed call."""
        if self._tokens.stamp() == self._seen:
            return current
        with self._guard():
            data = self._tokens.read()
        return current if data is None else self._adopt(data)

    # -- the interface the client uses ------------------------------------------------------

    def credential(self) -> Credential:
        current = self._current
        current = self._load() if current is None else self._fresh(current)
        token = current["access_token"]
        return Credential("", token)

    def refresh(self, failed: Credential) -> None:
        """Single-flight refresh after ``failed`` got expired_token (threads, processes, hosts)."""
        with self._guard(), self._tokens.hold() as hold:
            stored = self._held_pair(hold)
            if stored["access_token"] == failed.token:
                stored, ours = hold.rotate(stored, lambda: self._successor(stored))
                self.refreshes += ours
        # The new pair is stored (file: fsync + rename) before we get here and use it.
        self._adopt(stored)

    def _held_pair(self, hold: TokenHold) -> dict[str, Any]:
        stored = hold.held()
        if stored is None:
            raise ConfigError(
                f"the token store {self._path} disappeared",
                code="CONFIG_MISSING",
                hint="set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN again",
            )
        return stored

    def _successor(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Spend the refresh token: the record of the new pair (the old pair's hashes spent)."""
        answer = self._ask_token_server(stored["refresh_token"])
        spent = [
            *stored["spent"],
            _digest(stored["access_token"]),
            _digest(stored["refresh_token"]),
        ]
        record = self._record(
            answer["access_token"],
            answer["refresh_token"],
            env_seed=stored["env_seed"],
            spent=spent,
            answer=answer,
        )
        self._on_secret(record["access_token"])
        self._on_secret(record["refresh_token"])
        return record

    def _ask_token_server(self, refresh_token: str) -> dict[str, Any]:
        if not refresh_token:
            raise AuthError(
                "the access token expired and there is no refresh token to renew it",
                code="expired_token",
                hint="set B24_REFRESH_TOKEN (and B24_ACCESS_TOKEN) from the app's authorisation",
            )
        params = {
            "grant_type": "refresh_token",
            "client_id": self._settings.client_id,
            "client_secret": self._settings.client_secret,
            "refresh_token": refresh_token,
        }
        timeout = (self._settings.connect_timeout, min(self._settings.read_timeout, 30.0))
        try:
            with deadline.within(self._settings.answer_timeout) as cut:
                reply = self._session.get(
                    f"{self._settings.oauth_server}/oauth/token/",
                    params=params,
                    timeout=timeout,
                    stream=True,
                )
                with reply:
                    content = read_capped(reply, TOKEN_ANSWER_MAX, cut)
        except requests.RequestException as exc:
            raise TransientError(
                f"the token server did not answer the refresh ({type(exc).__name__})",
                code="TOKEN_SERVER_UNREACHABLE",
                hint="retry later; if the next refresh reports invalid_grant, authorise the app "
                "again (the refresh token may have been used)",
            ) from None
        return self._parse_token_answer(reply, content)

    @staticmethod
    def _parse_token_answer(reply: requests.Response, content: bytes | None) -> dict[str, Any]:
        """``content``: the answer's body, None when it passed TOKEN_ANSWER_MAX."""
        try:
            body = loads_strict(content) if content is not None else None
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            raise error_from_portal(
                body["error"],
                description if isinstance(description, str) else "token refresh refused",
                reply.status_code,
                write=False,
            )
        if not (
            isinstance(body, dict)
            and isinstance(body.get("access_token"), str)
            and isinstance(body.get("refresh_token"), str)
            and body["access_token"]
            and body["refresh_token"]
        ):
            raise TransientError(
                f"the token server's answer is not a token pair (HTTP {reply.status_code})",
                code="TOKEN_SERVER_MALFORMED",
                hint="check B24_OAUTH_SERVER; retry later",
                http_status=reply.status_code,
            )
        return body


class _StoreGuard:
    """Thread lock plus readable errors around token-store access (corrupt file, lock wait)."""

    def __init__(self, path: Path, lock: threading.Lock) -> None:
        self._path = path
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self._lock.release()
        if isinstance(exc, CorruptStateError):
            raise exc.with_hint(
                "set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN again (the newest tokens may be "
                "recoverable from the moved file)"
            ) from None
        if isinstance(exc, LockTimeout):
            raise TransientError(
                f"the token store {self._path} stayed locked too long",
                code="TOKEN_STORE_BUSY",
                hint="another process is refreshing or stuck; retry",
            ) from None
        if isinstance(exc, OSError):
            raise ConfigError(
                f"cannot use the token store {self._path}: {exc.strerror or type(exc).__name__}",
                code="CONFIG_INVALID",
                hint="check B24_STATE_DIR permissions",
            ) from None


def make_auth(
    settings: Settings, session: requests.Session, on_secret: Callable[[str], None]
) -> WebhookAuth | OAuthAuth:
    """The credential source for ``settings.auth_mode``."""
    if settings.auth_mode == "oauth":
        return OAuthAuth(settings, session, on_secret)
    return WebhookAuth(settings)
