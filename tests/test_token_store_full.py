"""A token store that cannot be written never costs the single-use refresh token.

The disk is really full: a small tmpfs filled to the last byte (needs root, as in CI), or a
file-size limit (RLIMIT_FSIZE, for any user). The refresh is refused before the refresh token
is spent; once there is room again the next call refreshes and succeeds with the same
credentials: no re-authorisation. If the store still cannot be replaced after the refresh, the
new pair waits in ``<store>.pending`` and the next process takes it over.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from b24agent import state
from b24agent.errors import ConfigError
from b24agent.rest.auth import token_store_path
from cli_support import Cli
from client_support import client_for, oauth_env, settings_for
from conftest import Sandbox
from disk_support import file_size_limit, fill, small_tmpfs

#: Enough for the seeded store (about 500 bytes) and the audit lines, less than a refresh needs.
FSIZE_LIMIT = 3000


@pytest.fixture(params=["tmpfs", "fsize"])
def how(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def state_dir(how: str, tmp_path: Path) -> Iterator[Path]:
    if how == "tmpfs":
        yield from small_tmpfs(tmp_path / "small-disk")
    else:
        yield tmp_path / "state"


def test_a_refresh_on_a_full_disk_keeps_the_refresh_token(
    portal: Sandbox, tmp_path: Path, how: str, state_dir: Path
) -> None:
    env = oauth_env(portal, state_dir)
    env.update(
        B24_SERVER="off",
        B24_RATE_LIMITER="memory",
        B24_AUDIT_FILE=str(tmp_path / "audit.jsonl"),
        HOME=str(tmp_path),
    )
    cli = Cli(tmp_path, env)
    cli.env["B24_STATE_DIR"] = str(state_dir)
    assert cli("user.current").code == 0  # seeds the store while there is room
    portal.admin("expire-tokens", {})

    if how == "tmpfs":
        filler = fill(state_dir)
        proc = cli.popen("user.current")
    else:
        proc = cli.popen_with(file_size_limit(FSIZE_LIMIT), "user.current")
    full = cli.finish(proc)

    assert full.code == 4, full.err
    assert full.error()["code"] == "TOKEN_STORE_UNWRITABLE"
    assert "refresh token was not used" in full.error()["message"]
    assert portal.stats()["token_refreshes"] == 0
    assert not list(state_dir.glob("*.pending"))

    if how == "tmpfs":
        filler.unlink()  # the disk has room again
    freed = cli("user.current")
    stats = portal.stats()
    print(
        f"\n{how}: full disk exit {full.code}; after freeing: exit {freed.code}, "
        f"{stats['token_refreshes']} refresh, {stats['failed_refreshes']} failed refreshes, "
        "0 re-authorisations"
    )
    assert freed.code == 0, freed.err
    assert stats["token_refreshes"] == 1 and stats["failed_refreshes"] == 0


def test_a_store_that_cannot_be_replaced_keeps_the_new_pair_pending(
    portal: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room was reserved, the refresh went through, and then the rename failed: the new
    pair is in ``<store>.pending`` (0600), the error says so, and the next client uses it."""
    path = token_store_path(settings_for(portal, tmp_path, oauth=True))
    with client_for(portal, tmp_path, oauth=True) as client:
        client.call("user.current")
    portal.admin("expire-tokens", {})
    real_replace = os.replace

    def failing_replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(state.os, "replace", failing_replace)
    with client_for(portal, tmp_path, oauth=True) as client, pytest.raises(ConfigError) as info:
        client.call("user.current")
    pending = state.Reservation.pending_path(path)
    assert info.value.code == "TOKEN_STORE_PENDING" and str(pending) in info.value.message
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    for secret in (portal.oauth["access_token"], portal.oauth["refresh_token"]):
        assert secret not in info.value.message + info.value.hint
    monkeypatch.undo()

    with client_for(portal, tmp_path, oauth=True) as client:
        assert client.call("user.current").result["ID"]
        assert client._auth.refreshes == 0  # took the pending pair over: no second refresh
    assert not pending.exists()
    stats = portal.stats()
    assert stats["token_refreshes"] == 1 and stats["failed_refreshes"] == 0


def test_a_reservation_left_by_a_killed_refresh_is_cleared(portal: Sandbox, tmp_path: Path) -> None:
    """Killed after reserving, before the token server answered: zeros in the pending file,
    which the next client removes (the stored pair is still the valid one)."""
    path = token_store_path(settings_for(portal, tmp_path, oauth=True))
    with client_for(portal, tmp_path, oauth=True) as client:
        client.call("user.current")
    state.Reservation(path, 8192)  # never committed nor released
    pending = state.Reservation.pending_path(path)
    assert pending.stat().st_size == 8192
    with client_for(portal, tmp_path, oauth=True) as client:
        assert client.call("user.current").result["ID"]
    assert not pending.exists()
    assert sorted(p.name for p in path.parent.glob(path.name + "*")) == [
        path.name,
        path.name + ".lock",
    ]
