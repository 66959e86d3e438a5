"""The sandbox portal: one object that owns the state and runs method calls.

``Portal.dispatch`` is the single door every call goes through, direct or inside ``batch``, so
existence, auth type, admin rights, scope, fault injection and the operating-time budget are
checked the same way everywhere. HTTP lives in ``server``; this module knows nothing about it.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from typing import Any

from .config import Credentials, SandboxConfig
from .context import AuthInfo, CallContext
from .envelope import Timing
from .errors import PortalError
from .events import EventBus
from .faults import Faults
from .limits import OperatingBudget, RequestBucket
from .oauth import OAuthServer
from .registry import MethodSpec, lookup
from .stats import Stats
from .store import Store
from .v3 import IdempotencyCache

#: Methods whose own time is not metered: a batch is accounted through its commands (limits.md).
UNMETERED = frozenset({"batch"})


def normalize_method(raw: str) -> str:
    """Method names are case-insensitive and may carry a ``.json`` suffix or a trailing ``/``."""
    name = raw.strip().rstrip("/").lower()
    return name[: -len(".json")] if name.endswith(".json") else name


def credential_key(auth: AuthInfo) -> str:
    """Who the per-method budget and idempotency keys belong to: the webhook or the OAuth app."""
    return f"app:{auth.client_id}" if auth.kind == "oauth" else f"webhook:{auth.user_id}"


class Portal:
    """State and behaviour of one sandbox portal. Attributes are read by method handlers:
    ``config`` (live settings), ``credentials``, ``store`` (SQLite data), ``events`` (event bus),
    ``stats``; ``base_url`` is set by the server once it has a port."""

    def __init__(
        self, config: SandboxConfig, credentials: Credentials, db_path: str | None = None
    ) -> None:
        self.config = config
        self._start_config = config.copy()
        self.credentials = credentials
        self.base_url = ""
        self.stats = Stats()
        self.faults = Faults()
        self.bucket = RequestBucket(lambda: self.config)
        self.operating = OperatingBudget(lambda: self.config)
        self.oauth = OAuthServer(credentials, lambda: self.config)
        self.idempotency = IdempotencyCache()
        self.store = Store(db_path)
        self.events = EventBus(self)

    # --- authentication -------------------------------------------------------------------

    def webhook_auth(self, user_id: str, code: str) -> AuthInfo:
        """Check the user id and code in a webhook address."""
        creds = self.credentials
        if not (
            user_id == str(creds.webhook_user_id)
            and hmac.compare_digest(code.encode(), creds.webhook_code.encode())
        ):
            raise PortalError("INVALID_CREDENTIALS", "Invalid request credentials", 403)
        return self._auth("webhook", creds.webhook_user_id, self.config.webhook_scopes)

    def token_auth(self, token: str | None) -> AuthInfo:
        """Check an OAuth access token (401 NO_AUTH_FOUND / invalid_token / expired_token)."""
        if not token:
            raise PortalError("NO_AUTH_FOUND", "Wrong authorization data", 401)
        user_id = self.oauth.authenticate(token)
        return self._auth("oauth", user_id, self.config.app_scopes, self.credentials.client_id)

    def _auth(
        self, kind: Any, user_id: int, scopes: set[str], client_id: str | None = None
    ) -> AuthInfo:
        is_admin = user_id in self.config.admin_user_ids
        return AuthInfo(kind, user_id, frozenset(scopes), client_id, is_admin)

    # --- calls ----------------------------------------------------------------------------

    def dispatch(self, ctx: CallContext, name: str, params: dict[str, Any]) -> Any:
        """Run method ``name`` for ``ctx``; returns the handler's value or raises PortalError."""
        spec = lookup(ctx.api, normalize_method(name))
        if spec is None:
            raise PortalError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
        self._authorize(ctx.auth, spec)
        metered = spec.name not in UNMETERED
        owner = credential_key(ctx.auth)
        if metered:
            try:
                self.operating.check(owner, spec.name)
            except PortalError:
                self.stats.bump("operating_limit_rejections")
                raise
        fault = self.faults.pick(spec.name)
        if fault is not None and not fault.after:
            fault.fire()
        # The handler's own CPU time, not its wall time: a command waiting for the store lock
        # while 40 other batches run is not working, and must not use up its method's budget.
        started = time.thread_time()
        try:
            value = spec.handler(ctx, params)
        finally:
            if metered:
                cost = self.config.method_cost_s(spec.name)
                spent = time.thread_time() - started if cost is None else cost
                self.operating.record(owner, spec.name, spent)
        if fault is not None:
            fault.fire()
        return value

    def timed_dispatch(
        self, ctx: CallContext, name: str, params: dict[str, Any]
    ) -> tuple[Any, Timing]:
        """``dispatch`` plus the call's ``time`` block, with the method's operating window for
        metered methods; used for direct calls and for every batch command alike."""
        started = time.time()
        value = self.dispatch(ctx, name, params)
        timing = Timing.since(started)
        method = normalize_method(name)
        if method not in UNMETERED:
            used, reset_at = self.operating.state(credential_key(ctx.auth), method)
            timing.operating, timing.operating_reset_at = used, reset_at
        return value, timing

    @staticmethod
    def _authorize(auth: AuthInfo, spec: MethodSpec) -> None:
        if spec.app_only and auth.kind != "oauth":
            raise PortalError(
                "WRONG_AUTH_TYPE", "Current authorization type is denied for this method", 403
            )
        if spec.admin_only and not auth.is_admin:
            raise PortalError("ACCESS_DENIED", "Access denied!", 403)
        if spec.scope != "basic" and spec.scope not in auth.scopes:
            raise PortalError(
                "insufficient_scope",
                "The request requires higher privileges than provided by the access token",
                403,
            )

    # --- admin ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start: settings, data, events, counters, faults, limiters, tokens."""
        start = self._start_config.copy()
        for item in dataclasses.fields(start):
            setattr(self.config, item.name, getattr(start, item.name))
        self.faults.reset()
        self.bucket.reset()
        self.operating.reset()
        self.idempotency.reset()
        self.oauth.reset()
        self.stats.reset()
        self.store.reset()
        self.events.reset()
