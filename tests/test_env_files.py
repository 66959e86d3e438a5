"""Env files are the operator's settings: never another user's, never through a link, never one
others may write or (holding a secret) read; and the operator's ceiling holds whichever file a
command names (review findings F5, F7, F12).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from b24agent.errors import ConfigError
from b24agent.settings import Ceiling, load_settings
from cli_support import Cli
from conftest import Sandbox, write_env

CODE = "abcdef0123456789"
HOOK = f"B24_WEBHOOK_URL=https://a.bitrix24.com/rest/1/{CODE}/\n"
NOBODY = 65534


def _refused(path: Path, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=str(path), environ={"HOME": str(path.parent)}, **kw)  # type: ignore[arg-type]
    error = info.value
    assert error.exit_code == 4 and error.code == "ENV_FILE_UNSAFE"
    assert str(path) in error.message and "\n" not in error.message
    assert CODE not in str(error) and CODE not in error.hint
    return error


def _loads(path: Path) -> str:
    return load_settings(env_file=str(path), environ={"HOME": str(path.parent)}).base_url


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_env_file_is_refused(tmp_path: Path) -> None:
    planted = write_env(tmp_path / "planted.env", HOOK + "B24_OAUTH_SERVER=https://thief.example\n")
    os.chown(planted, NOBODY, NOBODY)
    assert f"another user (uid {NOBODY})" in _refused(planted).message


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_env_file_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_env(tmp_path / "open.env", "B24_PACKS=core\n")
    path.chmod(mode)
    error = _refused(path)
    assert "writable by group or others" in error.message and "chmod 600" in error.hint


def test_linked_env_file_is_refused(tmp_path: Path) -> None:
    target = write_env(tmp_path / "real.env", HOOK)
    (tmp_path / "link.env").symlink_to(target)
    assert "symbolic link" in _refused(tmp_path / "link.env").message
    assert _loads(target) == "https://a.bitrix24.com"  # the file itself is fine


def test_fifo_env_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in _refused(fifo).message


def test_env_file_holding_a_secret_others_may_read_is_refused(tmp_path: Path) -> None:
    """F12: a 0644 file hands the webhook to every local account; without a secret it is fine."""
    path = write_env(tmp_path / "portal.env", HOOK)
    path.chmod(0o644)
    error = _refused(path)
    assert "B24_WEBHOOK_URL" in error.message and "readable by others" in error.message
    for backend in ("rediss://:pw@redis.internal/0", "rediss://redis.internal/0?password=pw"):
        store = write_env(tmp_path / "store.env", f"B24_STATE_BACKEND={backend}\n")
        store.chmod(0o644)
        assert "B24_STATE_BACKEND" in _refused(store, require_credentials=False).message
    plain = write_env(tmp_path / "plain.env", "B24_PACKS=core\n")
    plain.chmod(0o644)
    settings = load_settings(
        env_file=str(plain), environ={"HOME": str(tmp_path)}, require_credentials=False
    )
    assert settings.ceilings[-1] == Ceiling(("core",), (), f" in env file {plain}")


def test_group_readable_secret_file_only_when_root_shares_it(tmp_path: Path) -> None:
    """``root:b24 0640`` is an administrator sharing on purpose; a user's own 0640 is refused."""
    path = write_env(tmp_path / "portal.env", HOOK)
    path.chmod(0o640)
    if os.geteuid() == 0:
        assert _loads(path) == "https://a.bitrix24.com"
        os.chown(path, NOBODY, NOBODY)  # no longer root's: refused, for the owner alone
        assert "another user" in _refused(path).message
    else:
        assert "readable by its group" in _refused(path).message


def test_missing_state_root_env_is_no_error_but_a_named_one_is(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "B24_WEBHOOK_URL": HOOK.split("=", 1)[1].strip()}
    assert load_settings(environ=environ).env_file is None
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**environ, "B24_ENV_FILE": str(tmp_path / "gone.env")})
    assert info.value.code == "CONFIG_MISSING" and "B24_ENV_FILE" in info.value.hint


def test_cli_refuses_an_unsafe_env_file_in_one_line(portal: Sandbox, tmp_path: Path) -> None:
    cli = Cli(tmp_path, {})
    write_env(cli.cwd / "open.env", f"B24_WEBHOOK_URL={portal.webhook_url}\n").chmod(0o644)
    before = portal.stats()["requests"]
    run = cli("user.current", "--env-file", "open.env")
    assert run.code == 4 and run.out == "" and len(run.err.splitlines()) == 1, run.err
    error = run.error()
    assert error["code"] == "ENV_FILE_UNSAFE" and "open.env" in error["message"]
    assert "readable by others" in error["message"]
    assert portal.webhook["code"] not in run.err
    assert portal.stats()["requests"] == before


# --- F5: the operator's ceiling holds whichever file a command names ---------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """HOME whose state folder's .env is the operator's, with its ceiling."""
    root = tmp_path / ".local" / "state" / "bitrix24-agent"
    root.mkdir(parents=True)
    write_env(
        root / ".env",
        "B24_READ_ONLY=1\nB24_PACKS=core\nB24_ALLOW_FLAGS=no-audit\nB24_APPROVAL=destructive\n",
    )
    return tmp_path


def test_a_named_env_file_cannot_lift_the_operators_ceiling(home: Path) -> None:
    wide = write_env(
        home / "wide.env",
        HOOK + "B24_READ_ONLY=0\nB24_PACKS=core,comms,tasks\nB24_METHOD_ALLOWLIST=vendor.*\n"
        "B24_ALLOW_FLAGS=no-audit,allow-unlisted,audit-file\nB24_APPROVAL=off\n",
    )
    s = load_settings(env_file=str(wide), environ={"HOME": str(home)})
    assert s.base_url == "https://a.bitrix24.com" and s.env_file == wide  # its portal is used
    assert s.read_only is True
    assert s.allowed_flags == frozenset({"no-audit"})
    assert s.approval_level(enforced=False) == "destructive"  # not the file's "off"
    assert [c.packs for c in s.ceilings] == [("core",), ("core", "comms", "tasks")]


def test_the_environment_cannot_lift_the_operators_file_either(home: Path) -> None:
    environ = {"HOME": str(home), "B24_READ_ONLY": "0", "B24_ALLOW_FLAGS": "allow-unlisted"}
    s = load_settings(environ={**environ, "B24_APPROVAL": "writes"}, require_credentials=False)
    assert s.read_only is True and s.allowed_flags == frozenset()  # no flag both allow
    assert s.approval == "writes"  # the stricter of the two operator's sources


def test_a_named_env_file_alone_grants_no_consent(tmp_path: Path) -> None:
    """Without an operator's setting no widening flag is allowed, and a command's file cannot
    change that; nor can its allowlist admit an unknown method."""
    own = write_env(tmp_path / "own.env", "B24_ALLOW_FLAGS=no-audit\nB24_METHOD_ALLOWLIST=x.*\n")
    s = load_settings(env_file=str(own), environ={"HOME": str(tmp_path)}, require_credentials=False)
    assert s.allowed_flags == frozenset()
    assert s.ceilings[0] == Ceiling()  # the default: every catalog pack, no unknown method
    lower = write_env(tmp_path / "lower.env", "B24_APPROVAL=off\n")
    s = load_settings(
        env_file=str(lower), environ={"HOME": str(tmp_path)}, require_credentials=False
    )
    assert s.approval_level(enforced=True) == "writes"  # MCP's default stands
    higher = write_env(tmp_path / "higher.env", "B24_APPROVAL=destructive\n")
    s = load_settings(
        env_file=str(higher), environ={"HOME": str(tmp_path)}, require_credentials=False
    )
    assert s.approval_level(enforced=False) == "destructive"  # it may narrow the CLI's "off"
    consent = {"HOME": str(tmp_path), "B24_ALLOW_FLAGS": "no-audit,no-idempotency"}
    s = load_settings(env_file=str(own), environ=consent, require_credentials=False)
    assert s.allowed_flags == frozenset({"no-audit"})  # the file narrows the operator's consent


def test_a_home_in_a_named_env_file_does_not_move_the_operators_audit_log(
    tmp_path: Path,
) -> None:
    """With no HOME in the environment (a service, ``env -i``), a command's env file that sets
    one moves this run's log, so the CLI asks for the operator's ``audit-file`` consent; the
    operator's log stays where the operator's own sources put it (review6 L1)."""
    elsewhere = tmp_path / "elsewhere"
    moved = write_env(tmp_path / "moved.env", HOOK + f"HOME={elsewhere}\n")
    s = load_settings(env_file=str(moved), environ={})
    assert elsewhere in s.audit_file.parents
    assert elsewhere not in s.operator_audit_file.parents
    assert Path.home() in s.operator_audit_file.parents


def test_naming_the_operators_own_file_is_one_source(home: Path) -> None:
    own = home / ".local" / "state" / "bitrix24-agent" / ".env"
    s = load_settings(env_file=str(own), environ={"HOME": str(home)}, require_credentials=False)
    assert len(s.ceilings) == 1 and s.env_file == own
