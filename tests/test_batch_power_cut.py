"""A batch file's hand-over notes are on disk before their request leaves (a power cut keeps them).

A rerun sends a line with no note again without looking it up, so a note lost in a power cut
after its chunk left would create that record twice. The journal is fsynced once per batch
request, after its lines' notes and before it is sent (group commit, never once per line).

What a power cut would leave is observed, not guessed: a start-up hook in the CLI process
(``sitecustomize``, through PYTHONPATH) copies the journal aside each time it is fsynced. The
run is killed while the portal still holds its request; the journal is then replaced by that
copy (the power cut), and the rerun must find every line by its ORIGIN_ID and send nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_support import Cli, lead_creates
from conftest import Sandbox

#: Copies each fsynced batch-file journal to ``$FSYNC_SPY_DIR/<name>`` and counts the fsyncs.
HOOK = """
import os

_fsync = os.fsync


def fsync(fd):
    _fsync(fd)
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if path.endswith(".lines.jsonl"):
        spy = os.environ["FSYNC_SPY_DIR"]
        with open(path, "rb") as synced, open(os.path.join(spy, "on-disk"), "wb") as copy:
            copy.write(synced.read())
        with open(os.path.join(spy, "fsyncs"), "a") as count:
            count.write("1\\n")


os.fsync = fsync
"""
READ_TIMEOUT_S = 3.0


def _cli(portal: Sandbox, tmp_path: Path) -> tuple[Cli, Path]:
    hook, spy = tmp_path / "hook", tmp_path / "spy"
    hook.mkdir()
    spy.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    cli = Cli.on_webhook(portal, tmp_path).with_env(
        PYTHONPATH=str(hook), FSYNC_SPY_DIR=str(spy), B24_READ_TIMEOUT=str(READ_TIMEOUT_S)
    )
    return cli, spy


@pytest.mark.slow
def test_a_power_cut_after_a_chunk_left_keeps_its_lines_noted(
    portal: Sandbox, tmp_path: Path
) -> None:
    cli, spy = _cli(portal, tmp_path)
    calls = lead_creates(tmp_path / "cut.jsonl", "cut", 40)  # one batch request
    portal.admin("faults", {"rules": [{"method": "batch", "error": None, "delay_ms": 2500}]})
    proc = cli.popen("--batch-file", str(calls), "--confirm-write")
    portal.once_sent("batch", proc.kill).join()  # killed while the portal holds the request
    proc.communicate()
    time.sleep(2.7)  # the held request has run
    portal.admin("faults", {"rules": []})
    assert len(portal.lead_titles("cut-")) == 40  # the killed run's request did run

    [journal] = cli.state.rglob("*.lines.jsonl")
    on_disk = spy / "on-disk"
    journal.write_bytes(on_disk.read_bytes() if on_disk.exists() else b"")  # the power cut
    noted = [json.loads(line)["h"] for line in journal.read_text().splitlines()]
    time.sleep(READ_TIMEOUT_S)  # past the killed request's time on the portal
    rerun = cli("--batch-file", str(calls), "--confirm-write", "--output", "jsonl")
    titles = portal.lead_titles("cut-")
    print(
        f"\npower cut after the chunk left: {len(noted)} of 40 hand-over notes on disk; rerun "
        f"exit {rerun.code}: {len(titles)} records ({len(titles) - len(set(titles))} doubled)"
    )
    assert rerun.code == 0, rerun.err
    assert sorted(noted) == list(range(40))
    assert sorted(titles) == sorted(f"cut-{n}" for n in range(1, 41))


def test_the_journal_is_fsynced_once_per_request_not_per_line(
    portal: Sandbox, tmp_path: Path
) -> None:
    cli, spy = _cli(portal, tmp_path)
    run = cli(
        "--batch-file", str(lead_creates(tmp_path / "group.jsonl", "group", 120)), "--confirm-write"
    )
    assert run.code == 0, run.err
    fsyncs = (spy / "fsyncs").read_text().count("\n")
    print(f"\n120 lines in 3 requests: {fsyncs} journal fsyncs")
    assert fsyncs == 3 + 1  # one before each request, one when the run closes its journal
