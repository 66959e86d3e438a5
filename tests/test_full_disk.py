"""A disk that takes only part of a record: the record is refused whole, never stored cut.

Near a full disk (or at a file size limit) one write puts down what fits and returns a short
count. Each state writer must then undo what it wrote and raise, so that nobody counts a cut
record as stored: the offline worker clears at the portal only events its sink holds whole, a
CLI call whose audit line could not be written fails (exit 4) with the chain as it was, and the
next record after the room came back starts on a line of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from b24agent import state
from b24agent.state import JsonlWriter, Reservation, read_json, read_jsonl, write_json_atomic
from cli_support import SCRIPT, Cli, Run, check, lead_creates
from conftest import Sandbox
from disk_support import file_size_limit, fill, small_tmpfs
from test_worker_support import queue_rows, run_worker, seed_events, worker_env

#: More than the room left in every case below, so each such record is cut.
BIG = "p" * 20_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path / "small-disk", "128k")


@contextlib.contextmanager
def _capped(limit: int) -> Iterator[None]:
    """This process may grow no file past ``limit`` bytes while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _cut_appends(log: JsonlWriter, path: Path) -> None:
    """Two appends the disk takes only part of (grouped, then fsynced): each raises and leaves
    the file byte for byte as it was."""
    before = path.read_bytes()
    for sync in (False, True):
        with pytest.raises(OSError) as refused:
            log.append({"n": 1, "pad": BIG}, sync=sync)
        assert refused.value.errno in (errno.EFBIG, errno.ENOSPC)
        assert path.read_bytes() == before


def test_an_append_past_a_file_size_limit_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with JsonlWriter(path) as log:
        log.append({"n": 0})
        with _capped(path.stat().st_size + 3000):
            _cut_appends(log, path)
        log.append({"n": 2})  # the limit is lifted: the next line starts on its own
    assert [record["n"] for record in read_jsonl(path)] == [0, 2]


def test_an_append_to_a_full_disk_leaves_the_file_as_it_was(small_disk: Path) -> None:
    path = small_disk / "log.jsonl"
    with JsonlWriter(path) as log:
        log.append({"n": 0})
        filler = fill(small_disk, leave=4096)
        _cut_appends(log, path)
        filler.unlink()
        log.append({"n": 2, "pad": BIG})
    assert [record["n"] for record in read_jsonl(path)] == [0, 2]


#: A second writer of the same file in its own process (a second worker sharing one --sink):
#: it says "ready" once its writer is open, then on "go" appends and fsyncs one line, saying
#: "waiting" if it must wait for the file's append lock and "done" once its line is on disk.
_OTHER_WRITER = """
import fcntl, sys
from pathlib import Path
from b24agent.state import JsonlWriter

real_flock, told = fcntl.flock, []

def telling(fd, operation):
    try:
        return real_flock(fd, operation)
    except BlockingIOError:
        if not told:
            told.append(print("waiting", flush=True))
        raise

fcntl.flock = telling
with JsonlWriter(Path(sys.argv[1])) as log:
    print("ready", flush=True)
    sys.stdin.readline()
    log.append({"n": "B"}, sync=True)
print("done", flush=True)
"""


def test_an_undone_append_keeps_the_line_another_process_appended_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review7b M-a. This process (A) appends a line past its file size limit; the moment its
    write starts, a second process (B) appends and fsyncs its own line to the same file. Old:
    B's line went down first, and A's undo cut it away with A's torn line: an event B had
    stored (and would clear at the portal) lost. New: B waits for A's append and its undo
    ("waiting"), then appends; the file holds both whole lines that were acknowledged."""
    path = tmp_path / "inbox.jsonl"
    scripts = Path(state.__file__).parents[1]
    with JsonlWriter(path) as log:
        log.append({"n": "first"})
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(scripts)},
        )
        assert other.stdin is not None and other.stdout is not None
        assert other.stdout.readline() == "ready\n"
        real_write, said = os.write, []

        def b_writes_meanwhile(fd: int, data: bytes) -> int:
            if not said and b'"A"' in bytes(data):  # A's write starts: B appends now
                other.stdin.write("go\n")
                other.stdin.flush()
                said.append(other.stdout.readline())  # "done" (old) or "waiting" (new)
            return real_write(fd, data)

        monkeypatch.setattr(state.os, "write", b_writes_meanwhile)
        with _capped(path.stat().st_size + 3000), pytest.raises(OSError):
            log.append({"n": "A", "pad": BIG})
        monkeypatch.undo()
    rest = other.communicate(timeout=60)[0]
    print(f"\nB said {said} while A appended, then {rest!r}")
    assert other.returncode == 0
    assert [record["n"] for record in read_jsonl(path)] == ["first", "B"]


def test_a_state_file_the_disk_refuses_is_named_in_the_error(tmp_path: Path) -> None:
    """Review7b L-d: the atomic write (idempotency records, checkpoints) names the file it could
    not write, as the append does; before, the error said only "File too large"."""
    path = tmp_path / "record.json"
    with _capped(4096), pytest.raises(OSError) as refused:
        write_json_atomic(path, {"pad": BIG})
    assert refused.value.errno in (errno.EFBIG, errno.ENOSPC)
    assert refused.value.filename == str(path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [(("user.current",), 4), (("crm.lead.add", "--params", '{"fields":{"TITLE":"f"}}'), 7)],
)
def test_an_answer_the_full_disk_refuses_says_a_write_may_have_run_only_for_a_write(
    portal: Sandbox, tmp_path: Path, args: tuple[str, ...], exit_code: int
) -> None:
    """Review7b L-f: the answer is printed to a full disk (/dev/full). Old: a read too ended
    "after a write was sent ... may or may not have happened", exit 7. New: a read is a local
    failure (exit 4, no write was sent); a write that left is still exit 7."""
    cli = Cli.on_webhook(portal, tmp_path)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--confirm-write"],
            env=cli.env,
            cwd=cli.cwd,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    run = Run(done.returncode, "", done.stderr)
    check(run)
    print(f"\n{args[0]}: exit {run.code}: {run.error()['message']}")
    assert run.code == exit_code
    assert run.error()["code"] == "LOCAL_IO_ERROR"
    assert ("may or may not" in run.error()["hint"]) == (exit_code == 7)


def test_a_reserved_record_cut_by_a_full_disk_is_never_put_in_place(small_disk: Path) -> None:
    """A record larger than its reservation meets a full disk: the commit raises, the old file
    stays, and the cut pending record is not taken over later."""
    path = small_disk / "tokens.json"
    write_json_atomic(path, {"old": True})
    room = Reservation(path, 100)
    fill(small_disk)
    with pytest.raises(OSError):
        room.commit({"new": BIG})
    assert not room.durable
    assert read_json(path) == {"old": True}
    assert Reservation.leftover(path) is None


def test_an_overwrite_the_disk_refuses_part_of_puts_the_old_content_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In place within the file's size a write needs no new room, except on a copy-on-write
    disk: there the first write may be short and the next refused (simulated here)."""
    path = tmp_path / "head.json"
    write_json_atomic(path, {"hash": "a" * 64})
    before = path.read_bytes()
    real_pwrite, calls = os.pwrite, []

    def short_then_full(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            return real_pwrite(fd, bytes(data)[:10], offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(state.os, "pwrite", short_then_full)
    with pytest.raises(OSError):
        state.overwrite_json(path, {"hash": "b" * 64})
    assert path.read_bytes() == before


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_the_worker_clears_at_the_portal_only_events_its_sink_holds_whole(
    portal: Sandbox, tmp_path: Path, how: str
) -> None:
    """The reviewer's case: the sink's disk fills in the middle of a reservation. Every event
    ends whole in the sink or still on the portal (pending, or flagged after its DLQ line);
    none is cleared with a cut line, and no line of the sink or the DLQ is cut."""
    seeded = set(seed_events(portal, 60))
    state_dir = tmp_path / "state"
    env = worker_env(portal, state_dir)
    args = ["--drain", "--limit", "10", "--max-retries", "0"]
    if how == "tmpfs":
        disk = small_tmpfs(tmp_path / "small-disk", "64k")
        sink = next(disk) / "inbox.jsonl"
        fill(sink.parent, leave=3 * 4096)
        run = run_worker(env, *args, "--sink", str(sink))
    else:
        sink = tmp_path / "inbox.jsonl"
        # Room for the state files of 10 events; the sink's 60 lines need about 25 KB.
        run = run_worker(env, *args, "--sink", str(sink), preexec=file_size_limit(12_000))
    try:
        sunk, cut = _whole_and_cut(sink.read_text().splitlines())
        dead, cut_dead = _whole_and_cut(_dlq_lines(state_dir))
        left = {str(row["ID"]) for row in queue_rows(portal)}
    finally:
        if how == "tmpfs":
            next(disk, None)  # unmounts
    cleared = seeded - left
    print(
        f"\n{how}: exit {run.returncode}; sink: {len(sunk)} whole lines, {len(cut)} cut; DLQ: "
        f"{len(dead)} whole lines, {len(cut_dead)} cut; portal: {len(cleared)} cleared, "
        f"{len(left)} left; cleared without a whole sink line: {len(cleared - sunk)}"
    )
    assert run.returncode in (0, 4), run.stderr
    assert "Traceback" not in run.stderr
    assert 0 < len(sunk) < len(seeded)  # the disk really filled in the middle
    assert cleared <= sunk
    assert seeded == sunk | left
    assert not cut and not cut_dead


def _whole_and_cut(lines: list[str]) -> tuple[set[str], list[str]]:
    """Event ids of the whole lines (sink deliveries or DLQ records), and the cut lines."""
    whole, cut = set(), []
    for line in lines:
        try:
            whole.add(str(json.loads(line)["event"]["ID"]))
        except json.JSONDecodeError:
            cut.append(line)
    return whole, cut


def _dlq_lines(state_dir: Path) -> list[str]:
    return [line for path in state_dir.rglob("dlq.jsonl") for line in path.read_text().splitlines()]


def test_a_call_whose_audit_line_is_cut_fails_and_leaves_the_chain_whole(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Old behaviour: exit 0 with a cut line, which the next call cut off, so a call reported
    audited had no line and the head named a hash the file no longer held."""
    audit = tmp_path / "audit.jsonl"
    cli = Cli.on_webhook(portal, tmp_path).with_env(B24_AUDIT_FILE=str(audit))
    assert cli("user.current").code == 0
    before = audit.read_bytes()

    run = cli.finish(cli.popen_with(file_size_limit(len(before) + 100), "user.current"))
    assert run.code == 4, run.err
    assert run.error()["code"] == "AUDIT_UNWRITABLE"
    assert audit.read_bytes() == before

    assert cli("user.current").code == 0
    assert cli("--verify-audit").code == 0
    assert [line["outcome"] for line in read_jsonl(audit)] == ["ok", "ok"]


@pytest.mark.parametrize(("cap", "first_exit"), [(1_000, 4), (8_000, 7)])
def test_a_batch_file_whose_journal_meets_a_full_disk_is_finished_once_by_a_rerun(
    portal: Sandbox, tmp_path: Path, cap: int, first_exit: int
) -> None:
    """The journal refuses a note before the first request (nothing sent: exit 4, the key is
    free again) or after it (exit 7, the key waits for the rerun); either way the rerun with
    room again ends with each of the 120 records created once."""
    cli = Cli.on_webhook(portal, tmp_path).with_env(B24_READ_TIMEOUT="1")
    prefix = f"full-{cap}"
    calls = lead_creates(tmp_path / "calls.jsonl", prefix, 120)
    args = ("--batch-file", str(calls), "--confirm-write", "--idempotency-key", prefix)
    full = cli.finish(cli.popen_with(file_size_limit(cap), *args))
    assert full.code == first_exit, full.err
    assert full.error()["code"] == "LOCAL_IO_ERROR"
    time.sleep(1.2)  # past the read timeout: no request of the first run can still be running
    again = cli(*args, "--output", "jsonl")
    titles = portal.lead_titles(f"{prefix}-")
    print(f"\njournal capped at {cap} B: exit {full.code}; rerun {again.code}, {len(titles)} leads")
    assert again.code == 0, again.err
    assert sorted(titles) == sorted(f"{prefix}-{n}" for n in range(1, 121))


def test_every_event_flagged_at_the_portal_keeps_a_whole_dead_letter(
    portal: Sandbox, tmp_path: Path, small_disk: Path
) -> None:
    """The reviewer's DLQ case: every event fails (``false``) and the DLQ's disk fills. Old:
    a cut entry, cut off by the next run, whose event was then flagged at the portal with no
    entry left for ``--replay-dlq``. New: the first run stops (exit 4) with whole entries only;
    after room comes back the second flags every event, each with its whole entry."""
    seeded = set(seed_events(portal, 40))
    dlq = small_disk / "dlq.jsonl"
    env = worker_env(portal, tmp_path / "state")
    args = ["--once", "--max-retries", "0", "--handler-cmd", "false", "--dlq-file", str(dlq)]
    filler = fill(small_disk, leave=2 * 4096)
    full = run_worker(env, *args)
    _, cut_while_full = _whole_and_cut(dlq.read_text().splitlines())
    filler.unlink()
    again = run_worker(env, *args)
    dead, cut = _whole_and_cut(dlq.read_text().splitlines())
    print(
        f"\nDLQ on a full disk: exit {full.returncode} ({len(cut_while_full)} cut entries); "
        f"with room: exit {again.returncode}, {len(dead)} of {len(seeded)} events dead-lettered"
    )
    assert full.returncode == 4, full.stderr
    assert again.returncode == 0, again.stderr
    assert not cut_while_full and not cut
    assert dead == seeded
