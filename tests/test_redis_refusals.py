"""A Redis that refuses writes for now is a transient failure, and an OAuth refresh caught in it
keeps the rotated pair (review 8 H1); a Redis every local user can read is refused (H2); the
URL's options and a silent Redis are clear errors, asked once (L1).

- Redis adds "script: ..., on @user_script:N" to every error raised inside a script, a full
  Redis (OOM under ``maxmemory-policy noeviction``) or a replica after a failover (READONLY)
  included: that is exit 6, never STATE_CORRUPT "delete that key".
- A refresh Redis refuses before the refresh token is spent spends nothing.
- A refresh whose new pair Redis refuses after the refresh token was spent keeps the pair in a
  0600 file on this host; the next call there puts it into Redis, and the pair works.
- A Redis URL without a password is STATE_STORE_OPEN (exit 4) in every program, and so is a
  Redis that answers a connection without credentials, whatever password the URL names.
- An option redis-py cannot read is CONFIG_INVALID; a Redis that never answers is asked once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from b24agent.cli.sandbox_env import oauth_env
from cli_support import SCRIPT, Cli
from conftest import ROOT, Sandbox
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


# --- H2: a Redis every local user can read is refused -----------------------------------------

WORKER = ROOT / "skills" / "bitrix24-agent" / "scripts" / "offline_sync_worker.py"
MCP = ROOT / "skills" / "bitrix24-agent" / "scripts" / "mcp_server.py"


@pytest.mark.parametrize(
    "program", [[SCRIPT, "user.current"], [WORKER, "--once"], [MCP]], ids=["cli", "worker", "mcp"]
)
@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://localhost/1?db=1"])
def test_a_redis_url_without_a_password_is_refused_by_every_program(
    portal: Sandbox, tmp_path: Path, program: list[Path | str], url: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("B24_")},
        "HOME": str(tmp_path),
        "B24_STATE_DIR": str(tmp_path / "state"),
        "B24_WEBHOOK_URL": portal.webhook_url,
        "B24_SERVER": "off",
        "B24_STATE_BACKEND": url,
    }
    run = subprocess.run(
        [sys.executable, *map(str, program)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 4, run.stderr
    (line,) = run.stderr.strip().splitlines()
    error = json.loads(line)["error"]
    assert error["code"] == "STATE_STORE_OPEN" and "B24_STATE_BACKEND" in error["message"]
    assert portal.stats()["requests"] == 0


def test_a_redis_that_answers_strangers_is_refused_whatever_password_the_url_holds(
    portal: Sandbox, tmp_path: Path
) -> None:
    """redis-py's HELLO 3 AUTH passes with any password where the default user needs none."""
    server = RedisServer(tmp_path / "redis", requirepass=False).start()
    try:
        cli = _cli(portal, tmp_path, server, oauth=False, B24_RATE_LIMITER="file")
        run = cli("user.current")
        keys = list(server.client().scan_iter(match="b24:*"))
    finally:
        server.stop()
    assert run.code == 4, run.err
    error = run.error()
    assert error["code"] == "STATE_STORE_OPEN" and "made-up" not in run.err
    assert "B24_STATE_BACKEND" in error["hint"]
    assert portal.sent("user.current") == 0 and keys == []


# --- L1: the URL's options, and a Redis that does not answer -----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:SECRETPW@127.0.0.1:6379/0?socket_timeout=abc",
        "redis://:SECRETPW@127.0.0.1:6379/0?health_check_interval=x",
        "redis://:SECRETPW@127.0.0.1:6379/0?db=x",
        "redis://:SECRETPW@127.0.0.1:6379/0?no_such_option=1",
        "rediss://:SECRETPW@127.0.0.1:6379/0?ssl_cert_reqs=x",
        "redis://:SECRETPW@[::1:6379/0",
    ],
)
def test_redis_url_options_redis_py_cannot_read_are_config_invalid(
    portal: Sandbox, tmp_path: Path, url: str
) -> None:
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off"})
    run = cli("user.current", B24_STATE_BACKEND=url)
    assert run.code == 4, run.err
    error = run.error()
    assert error["code"] == "CONFIG_INVALID" and "B24_STATE_BACKEND" in error["message"]
    assert "SECRETPW" not in run.err and len(run.err.strip().splitlines()) == 1


@pytest.fixture
def silent_redis():
    """A TCP listener that takes connections and never answers; counts them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    taken: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):
            while True:
                taken.append(listener.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    yield listener.getsockname()[1], taken
    listener.close()
    for conn in taken:
        conn.close()


def test_a_silent_redis_is_asked_once_not_retried_as_a_portal(
    portal: Sandbox, tmp_path: Path, silent_redis: tuple[int, list[socket.socket]]
) -> None:
    port, taken = silent_redis
    url = f"redis://:pw@127.0.0.1:{port}/0?socket_timeout=1"
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off"})
    run = cli("user.current", B24_STATE_BACKEND=url, B24_RATE_LIMITER="file")
    assert run.code == 6, run.err
    assert run.error()["code"] == "STATE_BACKEND_UNREACHABLE"
    assert len(taken) < 2, f"{len(taken)} connections to a Redis that never answers"
    assert portal.sent("user.current") == 0
