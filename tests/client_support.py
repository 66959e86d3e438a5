"""Helpers shared by the client-library tests: Settings and clients aimed at a sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b24agent.cli import sandbox_env
from b24agent.rest.client import Bitrix24Client
from b24agent.settings import Settings, load_settings
from conftest import Sandbox

#: Fast retries so fault tests stay quick; the policy's shape is what is under test.
FAST = {"retry_base_s": 0.01, "retry_max_s": 0.05}


def _state_env(state: Path) -> dict[str, str]:
    return {"B24_STATE_DIR": str(state), "HOME": str(state)}


def webhook_env(portal: Sandbox, state: Path) -> dict[str, str]:
    return {"B24_WEBHOOK_URL": portal.webhook_url, **_state_env(state)}


def oauth_env(portal: Sandbox, state: Path) -> dict[str, str]:
    return {**sandbox_env.oauth_env(portal.url, portal.oauth), **_state_env(state)}


def settings_for(
    portal: Sandbox, state: Path, *, oauth: bool = False, **overrides: Any
) -> Settings:
    env = oauth_env(portal, state) if oauth else webhook_env(portal, state)
    return _settings(env, state, overrides)


def settings_at(webhook_url: str, state: Path, **overrides: Any) -> Settings:
    """Settings for a webhook at any address (a test's own server, a proxy before the sandbox)."""
    return _settings({"B24_WEBHOOK_URL": webhook_url, **_state_env(state)}, state, overrides)


def _settings(env: dict[str, str], state: Path, overrides: dict[str, Any]) -> Settings:
    empty = state / "empty.env"  # never pick up a developer's ./.env
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.touch()
    return load_settings(env_file=str(empty), environ=env, overrides={**FAST, **overrides})


def client_for(portal: Sandbox, state: Path, *, oauth: bool = False, **overrides: Any):
    """A client on ``portal``; reads are what the catalog says (crm.*.list/get are reads)."""
    return Bitrix24Client(settings_for(portal, state, oauth=oauth, **overrides))


def secrets_of(portal: Sandbox) -> list[str]:
    """Every secret the sandbox handed out, for leak checks."""
    oauth = portal.oauth
    return [
        portal.webhook["code"],
        oauth["client_secret"],
        oauth["access_token"],
        oauth["refresh_token"],
        oauth["application_token"],
    ]
