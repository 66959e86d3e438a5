"""The local boundary of state: folders this user owns and only this user may write, files never
followed through a link and only when regular. A planted signing key, an audit log linked to
another file, a FIFO in place of any state file, a group-writable or foreign state folder: each
is refused with STATE_UNSAFE (exit 4) before anything is sent, and the planted target is left as
it was.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from b24agent.settings import portal_key_of
from cli_support import Cli, Run, check
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


def _run(cli: Cli, *args: str, **env: str) -> Run:
    proc = cli.popen(*args, **env)
    try:
        out, err = proc.communicate(timeout=NO_HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"b24 {' '.join(args)} hung on a state file")
    run = Run(proc.returncode, out, err)
    check(run)
    return run


def _refused(portal: Sandbox, cli: Cli, *args: str, **env: str) -> dict[str, str]:
    before = portal.stats()["requests"]
    run = _run(cli, *args, **env)
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
    assert _run(cli, "crm.lead.list").code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_state_folder_of_another_user_is_refused(portal: Sandbox, cli: Cli) -> None:
    folder = _folder(cli, portal)
    os.chown(folder, 65534, 65534)
    error = _refused(portal, cli, "crm.lead.list")
    assert "owned by another user" in error["message"]
