"""The B24_* settings that point a client at a running sandbox portal, read from the start-up
line ``sandbox_portal.py`` prints (cli/sandbox.py ``startup_line``).

One place for that mapping, so ``make demo``, the tests and the benchmarks configure an OAuth
client of the sandbox the same way and a change to the line's keys changes them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["oauth_env"]

#: Keys of the line's ``oauth`` object that become B24_<KEY> as they are.
_OAUTH_KEYS = ("client_id", "client_secret", "access_token", "refresh_token")


def oauth_env(url: str, oauth: Mapping[str, Any]) -> dict[str, str]:
    """Settings of an OAuth client of the sandbox at ``url`` whose start-up line carried
    ``oauth``: the app's id and secret, its first token pair, and the token server."""
    env = {f"B24_{key.upper()}": str(oauth[key]) for key in _OAUTH_KEYS}
    env.update(B24_DOMAIN=url, B24_AUTH_MODE="oauth", B24_OAUTH_SERVER=str(oauth["server"]))
    return env
