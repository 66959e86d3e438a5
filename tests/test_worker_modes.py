"""The worker's modes as their users run them, in both places the worker runs: plain, holding
the OAuth app (README "The offline worker"), and through the broker, as its own OS user holding
no credential (README "The offline worker through the broker"; that half needs root and
useradd, and is skipped without them).

What each mode promises and these tests check: every event reaches the handler once, a kill at
the worst moment (the reserving request has left, its answer never arrives) loses and repeats
nothing, secrets reach neither stdout, stderr, the worker's files nor the broker's audit, and
bad input is one line on stderr with the documented exit code and nothing sent.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from b24agent.worker.checkpoint import Checkpoint
from b24agent.worker.dlq import DeadLetterQueue
from b24agent.worker.loop import Options, Worker
from b24agent.worker.queue import OfflineQueue
from broker_support import PYTHON, Broker, brokered_worker_env, can_make_users, oauth_broker
from client_support import client_for
from conftest import Sandbox
from test_worker_support import (
    WORKER_SCRIPT,
    duplicates,
    error_of,
    handled_counts,
    jsonl,
    oauth_call,
    open_dlq,
    queue_rows,
    seed_events,
    summary_of,
    worker_env,
)

CONNECTOR = "sync1"
#: How long the portal holds the reserving request the test kills the worker during.
HELD_MS = 1500
#: A --handler-cmd: exit 65 (permanent failure: straight to the dead letters) for the event ids
#: in argv[2], else the delivery appended to the file argv[1].
HANDLER = """\
import json, sys
delivery = json.load(sys.stdin)
if str(delivery["event"]["ID"]) in sys.argv[2].split(","):
    sys.exit(65)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(delivery) + "\\n")
"""
QUEUE_METHODS = ("event.offline.get", "event.offline.clear", "event.offline.error", "batch")
_NAMES = itertools.count()


@dataclass
class Place:
    """Where the worker runs: its environment, account and own folder (sink, DLQ, state)."""

    portal: Sandbox
    folder: Path
    env: dict[str, str]
    python: str
    account: dict[str, Any] = field(default_factory=dict)
    broker: Broker | None = None

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.python, str(WORKER_SCRIPT), *args],
            env=self.env,
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self.account,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.popen(*args)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def handler_cmd(self, out: Path, failing: list[str]) -> str:
        script = self.folder / "handler.py"
        script.write_text(HANDLER)
        script.chmod(0o644)
        return f"{self.python} {script} {out} {','.join(failing) or '-'}"

    def kill_at_reservation(self, args: tuple[str, ...], connector: str | None = None) -> None:
        """Kill the worker while its first reserving request is held: the rows are reserved
        under a process id it never learns. Locally that request is the batch that also scans
        for orphans (OfflineQueue.opening), except for a connector's queue; through the broker
        it is a request of its own."""
        seen = "batch" if self.broker is None and connector is None else "event.offline.get"

        def reserved() -> bool:
            return any(row["PROCESS_ID"] for row in queue_rows(self.portal, connector))

        self.kill_while_held(args, "event.offline.get", seen, 1, reserved)

    def kill_while_held(
        self, args: tuple[str, ...], held: str, seen: str, nth: int, ran: Callable[[], bool]
    ) -> None:
        """Start the worker and SIGKILL it once the portal holds its ``nth`` ``seen`` request,
        in which the ``held`` call is held back HELD_MS; then wait until ``ran`` says that
        call did its work, which the worker never learns of."""
        before = self.portal.sent(seen)
        rule = {"method": held, "error": None, "delay_ms": HELD_MS, "times": 1}
        self.portal.admin("faults", {"rules": [rule]})
        proc = self.popen(*args)
        deadline = time.monotonic() + 30
        while self.portal.sent(seen) < before + nth:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"the worker sent no {seen}"
            time.sleep(0.01)
        proc.kill()
        proc.communicate(timeout=30)
        while not ran():
            assert time.monotonic() < deadline, f"the held {held} never ran"
            time.sleep(0.05)

    def leaked(self, *texts: str) -> list[str]:
        """The app's secrets found in ``texts``, the worker's own files (a plain worker's
        token store aside: holding those is its job) and the broker's audit."""
        written = [*texts]
        for path in self.folder.rglob("*"):
            if path.is_file() and not (self.broker is None and path.name.startswith("oauth-")):
                written.append(path.read_text(errors="replace"))
        if self.broker is not None:
            written.append(self.broker.audit_file.read_text())
        keys = ("access_token", "refresh_token", "client_secret", "application_token")
        return [key for key in keys if any(self.portal.oauth[key] in text for text in written)]


def _place(kind: str, request: pytest.FixtureRequest, portal: Sandbox) -> Iterator[Place]:
    folder_name = f"w{next(_NAMES)}"
    if kind == "plain":
        folder = Path(request.getfixturevalue("tmp_path")) / folder_name
        folder.mkdir()
        yield Place(portal, folder, worker_env(portal, folder / "state"), sys.executable)
        return
    broker = request.getfixturevalue("shared_broker")
    accounts = broker.accounts
    folder = accounts.owned_folder(accounts.worker_home / folder_name, accounts.worker, 0o700)
    env = brokered_worker_env(broker, portal, folder)
    yield Place(portal, folder, env, PYTHON[0], accounts.as_worker(), broker)


@pytest.fixture(scope="module")
def shared_broker(request: pytest.FixtureRequest, sandbox_proc: Sandbox) -> Iterator[Broker]:
    """One broker for the module's tests (each test resets the portal it serves, and has a
    folder of its own): starting one costs a second or two."""
    if not can_make_users() or PYTHON is None:
        pytest.skip("needs root and useradd")
    broker = oauth_broker(request.getfixturevalue("accounts"), sandbox_proc, "modes")
    yield broker
    broker.stop()


@pytest.fixture(params=["plain", "broker"])
def place(request: pytest.FixtureRequest, portal: Sandbox) -> Iterator[Place]:
    yield from _place(request.param, request, portal)


@pytest.fixture
def brokered(request: pytest.FixtureRequest, portal: Sandbox) -> Iterator[Place]:
    yield from _place("broker", request, portal)


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(str(row["ID"]) for row in rows)


def _queue_calls(portal: Sandbox) -> dict[str, int]:
    by_method = portal.stats()["by_method"]
    return {method: by_method.get(method, 0) for method in QUEUE_METHODS}


def _queue_events(portal: Sandbox, count: int, connector: str | None) -> list[str]:
    """Queue ``count`` events, in the queue without a source or in the ``connector``'s (bound
    with event.bind, then raised by leads a webhook adds); their IDs, oldest first."""
    if connector is None:
        return seed_events(portal, count)
    bind = {"event": "ONCRMLEADADD", "event_type": "offline", "auth_connector": connector}
    oauth_call(portal, "event.bind", bind)
    commands = {f"a{n}": f"crm.lead.add?fields[TITLE]=lead{n}" for n in range(count)}
    assert portal.rest("batch", {"cmd": commands}).status_code == 200
    ids = [str(row["ID"]) for row in queue_rows(portal, connector)]
    assert len(ids) == count
    return ids


def test_auth_connector_drains_only_its_queue_once_across_a_kill(place: Place) -> None:
    """``--auth-connector`` reads that connector's queue (event-offline-get.md,
    event-offline-list.md) and nothing else: killed while its first reservation is held, the
    next run adopts the orphaned rows through the connector's own scan; every event of the
    connector's queue reaches the sink once, the queue without a source is not touched."""
    portal = place.portal
    others = seed_events(portal, 15)
    ours = sorted(_queue_events(portal, 20, CONNECTOR))
    sink = place.folder / "inbox.jsonl"
    args = ("--drain", "--auth-connector", CONNECTOR, "--limit", "8", "--sink", str(sink))

    place.kill_at_reservation(args, CONNECTOR)
    orphaned = [row for row in queue_rows(portal, CONNECTOR) if row["PROCESS_ID"]]
    result = place.run(*args)

    assert len(orphaned) == 8
    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == 8 and summary["handled"] == summary["cleared"] == 20
    counts = handled_counts(sink)
    assert sorted(counts) == ours and duplicates(counts) == 0
    assert queue_rows(portal, CONNECTOR) == []
    untouched = queue_rows(portal)
    assert _ids(untouched) == sorted(others) and not any(row["PROCESS_ID"] for row in untouched)
    assert place.leaked(result.stdout, result.stderr) == []


@pytest.mark.parametrize("connector", [None, CONNECTOR])
def test_replay_killed_at_its_reservation_hands_each_dead_letter_over_once(
    place: Place, connector: str | None
) -> None:
    """``--replay-dlq`` feeds the dead letters back (README; with ``--auth-connector``, those
    of that queue, chains-core.md): killed while it reserves the portal's error rows, the next
    replay adopts them and hands each dead letter over once, closes every DLQ entry, and a
    further replay repeats nothing; no event the first drain delivered is replayed."""
    portal = place.portal
    ids = _queue_events(portal, 10, connector)
    failing = ids[1::3]
    handled, dlq = place.folder / "handled.jsonl", place.folder / "dlq.jsonl"
    queue = ("--auth-connector", connector) if connector else ()
    handler = place.handler_cmd(handled, failing)
    drain = place.run("--drain", *queue, "--handler-cmd", handler, "--dlq-file", str(dlq))
    assert drain.returncode == 0, drain.stderr
    drained = summary_of(drain.stdout)
    assert drained["handled"] == 7 and drained["dead_lettered"] == drained["flagged"] == 3
    replayed = place.folder / "replayed.jsonl"
    args = ("--replay-dlq", *queue, "--sink", str(replayed), "--dlq-file", str(dlq))

    place.kill_at_reservation(args, connector)
    result = place.run(*args)
    again = place.run(*args)

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["replayed"] == 3 and summary["dlq_open"] == 0
    counts = handled_counts(replayed)
    assert sorted(counts) == sorted(failing) and duplicates(counts) == 0
    assert open_dlq(dlq) == {} and queue_rows(portal, connector) == []
    assert again.returncode == 0, again.stderr
    assert summary_of(again.stdout)["replayed"] == 0 and handled_counts(replayed) == counts
    assert place.leaked(drain.stdout, drain.stderr, result.stdout, result.stderr) == []


def test_a_drain_killed_while_its_clear_is_held_repeats_and_loses_nothing(place: Place) -> None:
    """Killed while the portal holds the clear of its first reservation (locally in one batch
    with the next get, which reserves rows the worker never sees): the next run clears what
    its checkpoint recorded done and adopts the rest; every event reaches the sink once."""
    portal = place.portal
    ids = seed_events(portal, 12)
    sink = place.folder / "inbox.jsonl"
    args = ("--drain", "--limit", "5", "--sink", str(sink))
    # Locally: the opening batch, then the batch with the clear; through the broker: the clear.
    seen, nth = ("batch", 2) if place.broker is None else ("event.offline.clear", 1)

    def ran() -> bool:  # the clear, and locally the get after it in the same batch
        rows = queue_rows(portal)
        return len(rows) <= 7 and (place.broker is not None or any(r["PROCESS_ID"] for r in rows))

    place.kill_while_held(args, "event.offline.clear", seen, nth, ran)
    result = place.run(*args)

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == (5 if place.broker is None else 0)
    counts = handled_counts(sink)
    assert sorted(counts) == sorted(ids) and duplicates(counts) == 0
    assert queue_rows(portal) == []
    assert place.leaked(result.stdout, result.stderr) == []


def test_once_works_one_reservation_at_a_time(place: Place) -> None:
    """``--once`` (README): one reservation per run, cleared before it exits; the next run
    takes the next rows, none twice. ``--event`` reserves only events of that name."""
    portal = place.portal
    ids = seed_events(portal, 12)  # ONCRMLEADUPDATE
    sink = place.folder / "inbox.jsonl"

    other = place.run("--once", "--event", "ONCRMDEALADD", "--sink", str(sink))
    runs = [
        place.run("--once", "--limit", "5", "--event", "onCrmLeadUpdate", "--sink", str(sink))
        for _ in range(2)
    ]

    assert other.returncode == 0, other.stderr
    assert summary_of(other.stdout)["reserved"] == 0

    for result in runs:
        assert result.returncode == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["reserved"] == summary["handled"] == summary["cleared"] == 5
        assert summary["queue_empty"] is False
    counts = handled_counts(sink)
    assert sorted(counts) == sorted(ids[:10]) and duplicates(counts) == 0
    left = queue_rows(portal)
    assert _ids(left) == sorted(ids[10:]) and not any(row["PROCESS_ID"] for row in left)


def test_listen_through_the_broker_is_refused_before_anything_is_sent(brokered: Place) -> None:
    """The portal's ONOFFLINEEVENT notice carries the app's access and refresh tokens
    (on-offline-event.md; events/index.md "Parameter auth"), and the worker the broker serves
    holds no credential: ``--listen`` is refused there, with or without the app token, with a
    hint that keeps to what works (polling), never one to lift the broker."""
    portal = brokered.portal
    seeded = seed_events(portal, 3)
    before = _queue_calls(portal)
    with_token = {**brokered.env, "B24_APPLICATION_TOKEN": portal.oauth["application_token"]}

    runs = [brokered.run("--sleep", "5", "--listen", "127.0.0.1:0")]
    brokered.env = with_token
    runs.append(brokered.run("--sleep", "5", "--listen", "127.0.0.1:0"))

    for result in runs:
        assert result.returncode == 2, result.stderr
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
        error = error_of(result.stderr)
        assert error["code"] == "LISTEN_NOT_BROKERED"
        assert "--sleep" in error["hint"] and "B24_BROKER" not in error["hint"]
        assert portal.oauth["application_token"] not in result.stderr
    assert _queue_calls(portal) == before
    assert _ids(queue_rows(portal)) == sorted(seeded)
    assert not list(brokered.folder.rglob("offline-worker"))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--drain", "--auth-connector", ""], "--auth-connector"),
        (["--drain", "--auth-connector", " "], "--auth-connector"),
        (["--replay-dlq", "--listen", "127.0.0.1:0"], "--listen"),
        (["--sleep", "5", "--listen", "127.0.0.1:http"], "--listen"),
    ],
)
def test_bad_mode_flags_are_one_line_exit_2_and_nothing_sent(
    place: Place, flags: list[str], needle: str
) -> None:
    """An empty ``--auth-connector`` (an unset variable in a unit file) would drain the queue
    without a source instead of the connector's: refused like any other bad flag."""
    place.env = {**place.env, "B24_APPLICATION_TOKEN": place.portal.oauth["application_token"]}
    seed_events(place.portal, 3)
    before = _queue_calls(place.portal)

    result = place.run(*flags)

    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert needle in json.dumps(error_of(result.stderr))
    assert _queue_calls(place.portal) == before
    assert len(queue_rows(place.portal)) == 3


def test_a_corrupt_dead_letter_file_stops_the_replay_before_anything_is_sent(
    place: Place,
) -> None:
    """A DLQ line that is not JSON (an edit, a bad disk) in the middle of the file: one line
    naming the file and line, exit 4, no error row reserved, and the file left as it was (it
    is the only copy of those dead letters)."""
    portal = place.portal
    ids = seed_events(portal, 4)
    dlq = place.folder / "dlq.jsonl"
    drain = place.run(
        "--drain",
        "--handler-cmd",
        place.handler_cmd(place.folder / "h.jsonl", ids[:2]),
        "--dlq-file",
        str(dlq),
    )
    assert drain.returncode == 0, drain.stderr
    lines = dlq.read_text().splitlines()
    damaged = "\n".join([lines[0], "{not json", *lines[1:]]) + "\n"
    dlq.write_text(damaged)
    before = _queue_calls(portal)

    result = place.run("--replay-dlq", "--dlq-file", str(dlq), "--sink", str(place.folder / "r"))

    assert result.returncode == 4, result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    error = error_of(result.stderr)
    assert error["code"] == "STATE_CORRUPT" and str(dlq) in error["message"]
    assert "line 2" in error["message"] and "adopts" not in error["hint"]
    assert _queue_calls(portal) == before and dlq.read_text() == damaged
    assert sorted(str(row["ID"]) for row in queue_rows(portal) if row["ERROR"] == "1") == sorted(
        ids[:2]
    )


class _Recording:
    """A buffered handler, like the sink: deliveries are durable only once ``flush`` returns.
    Notes each delivery the DLQ already closed while it was not flushed yet."""

    buffered = True
    description = "recording"

    def __init__(self, dlq: Path) -> None:
        self.dlq = dlq
        self.unflushed: list[str] = []
        self.flushed: list[str] = []
        self.closed_too_early: list[str] = []

    def __call__(self, delivery: Any) -> None:
        self.unflushed.append(delivery.delivery_id)

    def flush(self) -> None:
        closed = {line["delivery_id"] for line in jsonl(self.dlq) if line["status"] == "replayed"}
        self.closed_too_early += [key for key in self.unflushed if key in closed]
        self.flushed += self.unflushed
        self.unflushed = []

    def close(self) -> None:
        """Nothing held."""


def test_a_replayed_dead_letter_is_durable_before_its_entry_closes(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Dead letters whose portal rows are gone are replayed from the DLQ alone: with the sink,
    the replayed line must be fsynced before the ``replayed`` line closes the entry, or a power
    cut between the two loses the event with its entry already closed."""
    dlq = tmp_path / "dlq.jsonl"
    entries = [
        {"status": "dead", "delivery_id": f"d{n}", "reason": "x", "attempts": 1,
         "process_id": None, "event": {"ID": str(n), "EVENT_NAME": "ONCRMLEADADD"}}
        for n in (1, 2)
    ]  # fmt: skip
    dlq.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    handler = _Recording(dlq)

    with client_for(portal, tmp_path / "state", oauth=True) as client:
        worker = Worker(
            queue=OfflineQueue(client, limit=50),
            checkpoint=Checkpoint(tmp_path / "checkpoint.json").open(),
            handler=handler,
            dlq=DeadLetterQueue(dlq),
            options=Options(mode="replay"),
            portal="sandbox",
            stop=threading.Event(),
        )
        summary = worker.replay()

    assert summary.replayed == 2 and open_dlq(dlq) == {}
    assert handler.flushed == ["d1", "d2"] and handler.unflushed == []
    assert handler.closed_too_early == []


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:9", "unix:relative.sock", "unix:"])
def test_a_malformed_broker_address_is_refused_before_the_worker_starts(
    portal: Sandbox, tmp_path: Path, address: str
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "B24_BROKER": address,
        "B24_DOMAIN": portal.url,
        "B24_STATE_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), "--drain"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 4 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert error_of(result.stderr)["code"] == "CONFIG_INVALID"
    assert not (tmp_path / "state").exists()
