"""A Redis that refuses writes for now is a transient failure, and an OAuth refresh caught in it
keeps the rotated pair (review 8 H1).

- Redis adds "script: ..., on @user_script:N" to every error raised inside a script, a full
  Redis (OOM under ``maxmemory-policy noeviction``) or a replica after a failover (READONLY)
  included: that is exit 6, never STATE_CORRUPT "delete that key".
- A refresh Redis refuses before the refresh token is spent spends nothing.
- A refresh whose new pair Redis refuses after the refresh token was spent keeps the pair in a
  0600 file on this host; the next call there puts it into Redis, and the pair works.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from b24agent.cli.sandbox_env import oauth_env
from cli_support import Cli
from conftest import Sandbox
from redis_support import RedisServer
from test_auth_refresh import token_server


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _cli(portal: Sandbox, tmp_path: Path, server: RedisServer, *, oauth: bool, **env: str) -> Cli:
    account = (
        oauth_env(portal.url, portal.oauth) if oauth else {"B24_WEBHOOK_URL": portal.webhook_url}
    )
    return Cli(tmp_path, {**account, "B24_SERVER": "off", "B24_STATE_BACKEND": server.url, **env})


def _writes(server: RedisServer, *, taken: bool) -> None:
    """A full Redis: with ``maxmemory`` 1 byte and the default noeviction, every write is OOM."""
    server.client().config_set("maxmemory", 0 if taken else 1)


def _stored_pair(server: RedisServer) -> dict[str, str]:
    (key,) = [
        key
        for key in server.client().scan_iter(match="b24:*:tokens:oauth-*")
        if not key.endswith((b":fence", b":lease", b":written"))
    ]
    return json.loads(server.client().get(key))


def test_a_redis_refusing_writes_is_transient_not_corrupt(
    portal: Sandbox, tmp_path: Path, redis_server: RedisServer
) -> None:
    cli = _cli(portal, tmp_path, redis_server, oauth=False, B24_RATE_LIMITER="file")  # in Redis
    assert cli("user.current").code == 0
    _writes(redis_server, taken=False)
    for _ in range(2):
        run = cli("user.current")
        assert run.code == 6, run.err
        error = run.error()
        assert error["code"] == "STATE_BACKEND_ERROR" and error["retryable"], run.err
    assert portal.sent("user.current") == 1
    _writes(redis_server, taken=True)
    assert cli("user.current").code == 0


def test_a_refresh_redis_refuses_before_it_starts_spends_nothing(
    portal: Sandbox, tmp_path: Path, redis_server: RedisServer
) -> None:
    cli = _cli(portal, tmp_path, redis_server, oauth=True)
    assert cli("user.current").code == 0
    portal.admin("expire-tokens", {})
    _writes(redis_server, taken=False)
    run = cli("user.current")
    assert run.code == 6, run.err
    assert run.error()["code"] != "STATE_CORRUPT"
    assert portal.stats()["token_refreshes"] == 0
    _writes(redis_server, taken=True)
    assert cli("user.current").code == 0
    assert portal.stats()["token_refreshes"] == 1


def test_a_refreshed_pair_redis_refuses_is_kept_on_this_host_and_stored_later(
    portal: Sandbox, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The review's run: the lease is taken, the token server is slow, Redis fills up."""
    cli = _cli(portal, tmp_path, redis_server, oauth=True)
    assert cli("user.current").code == 0
    spent = _stored_pair(redis_server)
    portal.admin("expire-tokens", {})
    portal.admin("faults", {"rules": [{"method": "oauth.token", "error": None, "delay_ms": 3000}]})
    proc = cli.popen("user.current")
    client = redis_server.client()
    deadline = time.monotonic() + 60
    while not list(client.scan_iter(match="b24:*:tokens:*:lease")):
        assert time.monotonic() < deadline and proc.poll() is None, "no refresh lease taken"
        time.sleep(0.01)
    _writes(redis_server, taken=False)  # the refresh request is on its way (3 s at the portal)
    run = cli.finish(proc)
    assert run.code == 6, run.err
    error = run.error()
    assert error["code"] == "TOKEN_STORE_PENDING", run.err
    assert portal.stats()["token_refreshes"] == 1
    (kept,) = cli.state.rglob("*.unsaved")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and str(kept) in error["message"]
    portal.admin("faults", {"rules": []})
    _writes(redis_server, taken=True)
    assert _stored_pair(redis_server)["refresh_token"] == spent["refresh_token"]
    assert cli("user.current").code == 0  # takes the kept pair into Redis first
    assert not kept.exists()
    stored = _stored_pair(redis_server)
    assert stored["refresh_token"] != spent["refresh_token"]
    assert portal.stats()["token_refreshes"] == 1  # the kept pair served: no second refresh
    assert "access_token" in token_server(portal, stored["refresh_token"])
