"""The local boundary of state: folders this user owns and only this user may write, below
folders only this user or root may change (sticky ones like /tmp allowed), files never followed
through a link and only when regular. A planted signing key, an audit log linked to another
file, a FIFO in place of any state file, a group-writable or foreign state folder or folder above
it: each is refused with STATE_UNSAFE (exit 4) before anything is sent, and the planted target is
left as it was.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from b24agent.settings import portal_key_of
from cli_support import Cli
from conftest import Sandbox

ADD = ("crm.lead.add", "--params", json.dumps({"fields": {"TITLE": "boundary"}}))
#: A FIFO that someone waits on would hang a reader for ever; this is far more than enough.
NO_HANG_S = 30


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})


def _folder(cli: Cli, portal: Sandbox) -> Path:
    folder = cli.state / portal_key_of(portal.url)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _refused(portal: Sandbox, cli: Cli, *args: str, **env: str) -> dict[str, str]:
    before = portal.stats()["requests"]
    run = cli.within(NO_HANG_S, *args, **env)
    assert run.code == 4, run.err
    assert portal.stats()["requests"] == before, "sent although the state was unsafe"
    error = run.error()
    assert error["code"] == "STATE_UNSAFE"
    return error


def _victim(tmp_path: Path, text: str) -> tuple[Path, tuple[str, int]]:
    victim = tmp_path / "victim.txt"
    victim.write_text(text)
    return victim, (victim.read_text(), victim.stat().st_mtime_ns)


def test_planted_signing_key_is_refused(portal: Sandbox, cli: Cli, tmp_path: Path) -> None:
    plans = _folder(cli, portal) / "plans"
    plans.mkdir(mode=0o700)
    victim, before = _victim(tmp_path, json.dumps({"key": "ab" * 32}))
    key = plans / ".plan-signing-key.json"
    key.symlink_to(victim)
    error = _refused(portal, cli, *ADD, "--plan-only")
    assert str(key) in error["message"] and "symbolic link" in error["message"]
    assert (victim.read_text(), victim.stat().st_mtime_ns) == before
    assert sorted(p.name for p in plans.iterdir()) == [key.name]  # no plan was stored


def test_audit_symlink_is_refused_before_the_call(
    portal: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    victim, before = _victim(tmp_path, "someone else's file\n")
    audit = _folder(cli, portal) / "audit.jsonl"
    audit.symlink_to(victim)
    error = _refused(portal, cli, *ADD, "--confirm-write")
    assert str(audit) in error["message"]
    _refused(portal, cli, "crm.lead.list")
    assert (victim.read_text(), victim.stat().st_mtime_ns) == before
    assert portal.rest("crm.lead.list").json()["result"] == []


@pytest.mark.parametrize(
    ("relative", "args", "env"),
    [
        ("audit.jsonl", ("crm.lead.list",), {}),
        ("ratelimit.json", ("crm.lead.list",), {"B24_RATE_LIMITER": "file"}),
        ("plans/.plan-signing-key.json", (*ADD, "--plan-only"), {}),
    ],
)
def test_a_fifo_in_place_of_a_state_file_does_not_hang(
    portal: Sandbox, cli: Cli, relative: str, args: tuple[str, ...], env: dict[str, str]
) -> None:
    fifo = _folder(cli, portal) / relative
    fifo.parent.mkdir(mode=0o700, exist_ok=True)
    os.mkfifo(fifo, 0o600)
    error = _refused(portal, cli, *args, **env)
    assert str(fifo) in error["message"] and "not a regular file" in error["message"]


def test_state_folder_writable_by_others_is_refused(portal: Sandbox, cli: Cli) -> None:
    folder = _folder(cli, portal)
    folder.chmod(0o775)
    error = _refused(portal, cli, "crm.lead.list")
    assert str(folder) in error["message"] and "0775" in error["message"]
    folder.chmod(0o700)
    assert cli.within(NO_HANG_S, "crm.lead.list").code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_state_folder_of_another_user_is_refused(portal: Sandbox, cli: Cli) -> None:
    folder = _folder(cli, portal)
    os.chown(folder, 65534, 65534)
    error = _refused(portal, cli, "crm.lead.list")
    assert "owned by another user" in error["message"]


def _cli_at(portal: Sandbox, tmp_path: Path, state: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_STATE_DIR": str(state)})


def _folder_with_mode(path: Path, mode: int) -> Path:
    path.mkdir(mode=0o700)
    path.chmod(mode)
    return path


def test_a_group_writable_folder_above_the_state_folder_is_refused(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Another user in the group could rename the state folder away and put theirs in place."""
    shared = _folder_with_mode(tmp_path / "shared", 0o775)
    cli = _cli_at(portal, tmp_path, shared / "home" / "state")
    error = _refused(portal, cli, "crm.lead.list")
    assert error["message"].startswith(f"{shared} is a folder above the state folder")
    assert "0775" in error["message"] and "not sticky" in error["message"]
    assert list(shared.iterdir()) == [], "a folder was made below the unsafe one"
    shared.chmod(0o755)
    assert cli.within(NO_HANG_S, "crm.lead.list").code == 0


def test_a_link_into_a_group_writable_folder_is_refused(portal: Sandbox, tmp_path: Path) -> None:
    """The path as resolved is checked too, not only the safe-looking path as given."""
    shared = _folder_with_mode(tmp_path / "shared", 0o777)
    real = _folder_with_mode(shared / "real", 0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    error = _refused(portal, _cli_at(portal, tmp_path, link / "state"), "crm.lead.list")
    assert error["message"].startswith(f"{shared} is a folder above the state folder")


def test_a_sticky_world_writable_folder_above_is_allowed_like_tmp(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Others may add entries to a sticky folder but never rename or remove ours."""
    sticky = _folder_with_mode(tmp_path / "tmp-like", 0o1777)
    state = sticky / "state"
    assert _cli_at(portal, tmp_path, state).within(NO_HANG_S, "crm.lead.list").code == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert [p.name for p in state.iterdir()] == [portal_key_of(portal.url)]


def test_folders_made_under_a_loose_umask_are_private(portal: Sandbox, tmp_path: Path) -> None:
    """mkdir(parents=True) would give the made parents 0775 under umask 002, and the next run
    would refuse them; each folder the CLI makes is 0700 whatever the umask."""
    cli = _cli_at(portal, tmp_path, tmp_path / "a" / "b" / "state")
    run = cli.finish(cli.popen_with(lambda: os.umask(0o002), "crm.lead.list"))
    assert run.code == 0, run.err
    made = [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "state"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in made] == [0o700, 0o700, 0o700]
    assert cli.within(NO_HANG_S, "crm.lead.list").code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_folder_above_owned_by_another_user_is_refused(portal: Sandbox, tmp_path: Path) -> None:
    theirs = _folder_with_mode(tmp_path / "theirs", 0o755)
    os.chown(theirs, 65534, 65534)
    error = _refused(portal, _cli_at(portal, tmp_path, theirs / "state"), "crm.lead.list")
    assert error["message"].startswith(f"{theirs} is a folder above the state folder")
    assert "owned by another user (uid 65534)" in error["message"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a link away needs root")
def test_a_link_above_owned_by_another_user_is_refused(portal: Sandbox, tmp_path: Path) -> None:
    """A link another user left in a sticky folder (``/tmp``) leads to a folder of ours today;
    its owner may point it at another folder of ours tomorrow (review6 L3)."""
    sticky = _folder_with_mode(tmp_path / "tmp-like", 0o1777)
    ours = _folder_with_mode(tmp_path / "ours", 0o700)
    link = sticky / "link"
    link.symlink_to(ours)
    os.lchown(link, 65534, 65534)
    error = _refused(portal, _cli_at(portal, tmp_path, link / "state"), "crm.lead.list")
    assert error["message"].startswith(f"{link} is a link above the state folder")
    assert not (ours / "state").exists()
    os.lchown(link, os.geteuid(), os.getegid())  # our own link to our own folder is fine
    assert _cli_at(portal, tmp_path, link / "state").within(NO_HANG_S, "crm.lead.list").code == 0
