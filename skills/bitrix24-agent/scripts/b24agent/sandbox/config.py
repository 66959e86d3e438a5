"""Sandbox settings and credentials.

``Credentials`` are fixed for the life of a sandbox (they are printed once at start and every
client under test is configured with them); ``SandboxConfig`` is what tests change at run time
through the admin ``settings`` operation, and ``reset`` puts back a copy of the start values.
"""

from __future__ import annotations

import copy
import fnmatch
import secrets
from dataclasses import dataclass, field
from typing import Literal

Plan = Literal["standard", "enterprise", "unlimited"]

#: Leaky-bucket parameters per plan (drain per second, capacity), limits.md; None = no limit.
PLAN_LIMITS: dict[str, tuple[float, int] | None] = {
    "standard": (2.0, 50),
    "enterprise": (5.0, 250),
    "unlimited": None,
}

#: Scope codes from api-reference/scopes/permissions.md that a fresh webhook or app gets, broad
#: on purpose so a test only narrows them when it exercises ``insufficient_scope``.
DEFAULT_SCOPES: frozenset[str] = frozenset(
    {
        "bizproc",
        "calendar",
        "catalog",
        "crm",
        "department",
        "disk",
        "entity",
        "im",
        "imbot",
        "imopenlines",
        "landing",
        "lists",
        "log",
        "placement",
        "sale",
        "sonet_group",
        "task",
        "tasks",
        "telephony",
        "timeman",
        "user",
        "user_basic",
        "userconsent",
    }
)


def _token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Credentials:
    """Secrets of one sandbox run. All random, so two sandboxes never accept each other's."""

    webhook_user_id: int = 1
    webhook_code: str = field(default_factory=_token)
    client_id: str = field(default_factory=lambda: "local." + secrets.token_hex(8))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    application_token: str = field(default_factory=_token)
    member_id: str = field(default_factory=_token)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass
class SandboxConfig:
    """Behaviour a test may change at run time (admin ``settings``)."""

    plan: Plan = "standard"
    latency_ms: int = 0
    token_lifetime_s: int = 3600
    webhook_scopes: set[str] = field(default_factory=lambda: set(DEFAULT_SCOPES))
    app_scopes: set[str] = field(default_factory=lambda: set(DEFAULT_SCOPES))
    features: set[str] = field(default_factory=lambda: {"rest_offline_extended"})
    operating_budget_s: float = 480.0
    method_cost_ms: dict[str, float] = field(default_factory=dict)
    admin_user_ids: set[int] = field(default_factory=lambda: {1})
    oauth_user_id: int = 1
    #: Read an ``Authorization: Bearer`` header (some doc examples); the documented way is the
    #: ``auth`` parameter, which is always read. Off proves a client never needs the header.
    bearer_header: bool = True
    #: A renamed portal (change-domen.md): every ``/rest/`` request whose Host is not this
    #: address's gets a 302 to it, same path and query; "" serves every Host.
    moved_to: str = ""
    #: 429 OPERATION_TIME_LIMIT bodies as limits.md shows them: no ``operating_reset_at``.
    #: On, the body carries it too (a client must not rely on that).
    reset_at_in_limit_error: bool = False

    def copy(self) -> SandboxConfig:
        return copy.deepcopy(self)

    def bucket(self) -> tuple[float, int] | None:
        """(drain rate per second, capacity) of the request-rate bucket, None when unlimited."""
        return PLAN_LIMITS[self.plan]

    def method_cost_s(self, method: str) -> float | None:
        """Simulated handler seconds for ``method`` (first matching glob), None if not set."""
        for pattern, cost_ms in self.method_cost_ms.items():
            if fnmatch.fnmatchcase(method, pattern.lower()):
                return float(cost_ms) / 1000.0
        return None


def _scope_set(value: object, key: str) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return set(value)


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    return value


def _plan(value: object, key: str) -> str:
    if value not in PLAN_LIMITS:
        raise ValueError(f"{key} must be one of {sorted(PLAN_LIMITS)}")
    return str(value)


def _costs(value: object, key: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must map method globs to milliseconds")
    return {str(k).lower(): _number(v, key) for k, v in value.items()}


def _int(value: object, key: str) -> int:
    return int(_number(value, key))


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _base_url(value: object, key: str) -> str:
    if not isinstance(value, str) or (value and "://" not in value):
        raise ValueError(f"{key} must be an address with a scheme, or empty")
    return value.rstrip("/")


#: How each admin-settable field is validated and converted from JSON.
_SETTERS = {
    "plan": _plan,
    "latency_ms": _int,
    "token_lifetime_s": _int,
    "webhook_scopes": _scope_set,
    "app_scopes": _scope_set,
    "features": _scope_set,
    "operating_budget_s": _number,
    "method_cost_ms": _costs,
    "oauth_user_id": _int,
    "bearer_header": _bool,
    "moved_to": _base_url,
    "reset_at_in_limit_error": _bool,
}


def apply_settings(config: SandboxConfig, payload: dict[str, object]) -> None:
    """Validate every key first, then change them all: a bad key changes nothing."""
    unknown = set(payload) - set(_SETTERS)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    changes = {key: _SETTERS[key](value, key) for key, value in payload.items()}
    for key, value in changes.items():
        setattr(config, key, value)


def settings_view(config: SandboxConfig) -> dict[str, object]:
    """The admin-settable fields as JSON (sets sorted)."""
    view: dict[str, object] = {}
    for key in _SETTERS:
        value = getattr(config, key)
        view[key] = sorted(value) if isinstance(value, set) else value
    return view
