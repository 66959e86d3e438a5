"""OAuth refresh against the sandbox's strict token server (a refresh token works once):
single-flight across real processes and threads, the newest token never lost, stale environment
tokens never winning, and clear errors without secrets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import AuthError, ConfigError
from b24agent.rest.auth import token_store_path
from b24agent.rest.client import Bitrix24Client
from client_support import client_for, oauth_env, secrets_of, settings_for
from conftest import Sandbox

PROCESSES = 10

#: One OS process: wait for the start signal, make one call, report.
WORKER = r"""
import json, os, sys, time
from pathlib import Path
from b24agent.rest.client import Bitrix24Client
from b24agent.settings import load_settings

go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
try:
    with Bitrix24Client(load_settings(env_file=sys.argv[2])) as client:
        user = client.call("user.current").result
    print(json.dumps({"ok": True, "user": user["ID"], "refreshes": client._auth.refreshes}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""


def token_server(portal: Sandbox, refresh_token: str) -> dict[str, Any]:
    response = portal.session.get(
        f"{portal.url}/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": portal.oauth["client_id"],
            "client_secret": portal.oauth["client_secret"],
            "refresh_token": refresh_token,
        },
        timeout=30,
    )
    return response.json()


def stored(tmp_path: Path, portal: Sandbox) -> dict[str, Any]:
    return json.loads(token_store_path(settings_for(portal, tmp_path, oauth=True)).read_text())


def test_ten_processes_with_an_expired_token_refresh_exactly_once(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("expire-tokens", {})
    empty = tmp_path / "empty.env"
    empty.write_text("")
    go = tmp_path / "go"
    env = {**os.environ, **oauth_env(portal, tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(go), str(empty)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    time.sleep(0.5)  # let every interpreter start and wait at the line
    go.touch()
    reports = [json.loads(w.communicate(timeout=60)[0]) for w in workers]

    assert all(r["ok"] for r in reports), reports
    assert {r["user"] for r in reports} == {"1"}
    assert sum(r["refreshes"] for r in reports) == 1
    stats = portal.stats()
    assert stats["token_refreshes"] == 1
    assert stats["failed_refreshes"] == 0

    path = token_store_path(settings_for(portal, tmp_path, oauth=True))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    newest = stored(tmp_path, portal)
    assert newest["access_token"] != portal.oauth["access_token"]
    # The stored refresh token is the live one: the token server accepts it.
    assert "access_token" in token_server(portal, newest["refresh_token"])


def test_threads_sharing_a_client_refresh_once(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path, oauth=True)
    client.call("user.current")
    portal.admin("expire-tokens", {})
    with ThreadPoolExecutor(8) as pool:
        users = list(pool.map(lambda _: client.call("user.current").result["ID"], range(8)))
    assert users == ["1"] * 8
    assert portal.stats()["token_refreshes"] == 1


def test_stale_environment_tokens_never_overwrite_rotated_ones(
    portal: Sandbox, tmp_path: Path
) -> None:
    client_for(portal, tmp_path, oauth=True).call("user.current")
    portal.admin("expire-tokens", {})
    client_for(portal, tmp_path, oauth=True).call("user.current")  # rotates once
    rotated = stored(tmp_path, portal)

    # A new process with the same (now stale) environment uses the store, not the env pair.
    later = client_for(portal, tmp_path, oauth=True)
    assert later.call("user.current").result["ID"] == "1"
    assert stored(tmp_path, portal)["access_token"] == rotated["access_token"]
    assert portal.stats()["token_refreshes"] == 1
    assert portal.stats()["failed_refreshes"] == 0


def test_a_fresh_environment_pair_replaces_the_store(portal: Sandbox, tmp_path: Path) -> None:
    client_for(portal, tmp_path, oauth=True).call("user.current")
    # The app was authorised again elsewhere: a pair the store has never seen.
    fresh = token_server(portal, portal.oauth["refresh_token"])
    client = client_for(
        portal,
        tmp_path,
        oauth=True,
        access_token=fresh["access_token"],
        refresh_token=fresh["refresh_token"],
    )
    client.call("user.current")
    assert stored(tmp_path, portal)["refresh_token"] == fresh["refresh_token"]


def test_spent_refresh_token_is_a_clear_auth_error(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path, oauth=True)
    client.call("user.current")
    token_server(portal, portal.oauth["refresh_token"])  # someone else spent it
    portal.admin("expire-tokens", {})
    with pytest.raises(AuthError) as info:
        client.call("user.current")
    error = info.value
    assert error.code == "invalid_grant" and error.exit_code == 4
    assert "B24_REFRESH_TOKEN" in error.hint
    text = str(error) + error.hint + json.dumps(error.to_json())
    assert not any(secret in text for secret in secrets_of(portal))


def test_expired_without_refresh_token(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path, oauth=True, refresh_token="")
    portal.admin("expire-tokens", {})
    with pytest.raises(AuthError) as info:
        client.call("user.current")
    assert "no refresh token" in info.value.message


def test_corrupt_token_store_is_moved_aside_and_reported(portal: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(portal, tmp_path, oauth=True)
    path = token_store_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaked = portal.oauth["refresh_token"]
    path.write_text(json.dumps({"access_token": 5, "refresh_token": leaked}))
    with pytest.raises(ConfigError) as info:
        Bitrix24Client(settings).call("user.current")
    assert str(path) in info.value.message
    assert leaked not in str(info.value) + info.value.hint
    assert not path.exists()
    assert list(path.parent.glob(path.name + ".corrupt-*"))


def test_no_tokens_anywhere_is_a_config_error(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path, oauth=True, B24_ACCESS_TOKEN="", B24_REFRESH_TOKEN="")
    with pytest.raises(ConfigError) as info:
        client.call("user.current")
    assert "B24_ACCESS_TOKEN" in info.value.message
    assert client.requests_sent == 0
