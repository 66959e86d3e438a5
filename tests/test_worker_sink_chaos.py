"""The sink's grouped fsync under SIGKILL, and the drain's one request per reservation (issue 19).

The sink fsyncs once per reservation and the worker journals those events done only after that
fsync, so a kill can repeat what was handled but not yet journaled, and nothing else. Each kill
below is followed by a look at the dead worker's files: an event the checkpoint (snapshot or
journal) already called done must never reach the sink again, and every event must reach it.
Faults include batches that run and then answer 500 (``after``): the clear and the next get
went through but the worker never saw the new process id, so the rows are adopted back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from test_worker_support import (
    handled_counts,
    kill_repeatedly,
    line_count,
    queue_rows,
    run_worker,
    seed_events,
    summary_of,
    worker_env,
)

EVENTS = 3000
KILLS = 10
FAULTS = [
    {"method": "batch", "error": "INTERNAL_SERVER_ERROR", "status": 500, "rate": 0.03},
    {
        "method": "batch",
        "error": "INTERNAL_SERVER_ERROR",
        "status": 500,
        "rate": 0.03,
        "after": True,
    },
    {"method": "event.offline.*", "error": "QUERY_LIMIT_EXCEEDED", "status": 503, "rate": 0.01},
]


def _recorded_done(state: Path) -> set[str]:
    """Event ids the checkpoint holds as done: snapshot outcomes plus journal lines."""
    folder = state / "offline-worker"
    done: set[str] = set()
    snapshot = folder / "checkpoint.json"
    if snapshot.exists():
        for reservation in json.loads(snapshot.read_text())["reservations"]:
            done |= {
                str(e["row"]["ID"]) for e in reservation["events"] if e.get("outcome") == "done"
            }
    journal = folder / "checkpoint.json.journal"
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: never acknowledged
            if record["outcome"] == "done":
                done.add(record["id"])
    return done


def test_sigkill_repeats_only_what_the_checkpoint_had_not_recorded(portal, tmp_path: Path):
    rng = random.Random(20261203)
    ids = set(seed_events(portal, EVENTS))
    portal.admin("faults", {"rules": FAULTS, "seed": 7})
    sink, state = tmp_path / "inbox.jsonl", tmp_path / "state"
    env = worker_env(portal, state)
    args = ["--drain", "--sink", str(sink), "--limit", "200", "--log-level", "error"]

    watch = _NoRecordedRepeat(sink, state)
    kills = kill_repeatedly(
        env,
        args,
        sink,
        rng,
        kills=KILLS,
        rounds=4 * KILLS,
        most_lines=400,
        most_sleep_s=0.6,
        after_round=watch,
    )
    assert kills == KILLS, "the queue drained before all kills happened"

    portal.admin("faults", {"rules": []})
    final = run_worker(env, *args)
    assert final.returncode == 0, final.stderr
    assert summary_of(final.stdout)["queue_empty"] is True
    watch()
    counts = handled_counts(sink)
    assert set(counts) == ids, "an event never reached the sink"
    assert queue_rows(portal) == [], "rows left reserved on the portal"
    repeats = sum(n - 1 for n in counts.values())
    assert repeats <= kills * 200  # at most one reservation's unjournaled events per kill
    print(f"\nsink chaos: kills={kills} events={len(counts)} repeated={repeats}")


class _NoRecordedRepeat:
    """Called after each worker run: no event the checkpoint had recorded done (at the end of
    any earlier run) reached the sink again in this run."""

    def __init__(self, sink: Path, state: Path) -> None:
        self.sink, self.state = sink, state
        self.recorded: set[str] = set()
        self.before = handled_counts(sink)

    def __call__(self) -> None:
        after = handled_counts(self.sink)
        again = {
            key for key, n in after.items() if n > self.before.get(key, 0) and key in self.recorded
        }
        assert not again, f"events the checkpoint had recorded came again: {sorted(again)[:5]}"
        self.recorded |= _recorded_done(self.state)
        self.before = after


def test_drain_makes_one_request_per_reservation(start_sandbox, tmp_path: Path) -> None:
    sandbox = start_sandbox("--plan", "unlimited")
    sandbox.admin("seed", {"event.offline": 1000})
    env = worker_env(sandbox, tmp_path / "state")
    before = sandbox.stats()["by_method"]
    done = run_worker(env, "--drain", "--sink", str(tmp_path / "in.jsonl"), "--limit", "100")
    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stdout)
    assert summary["handled"] == summary["cleared"] == 1000
    after = sandbox.stats()["by_method"]
    made = {k: after.get(k, 0) - before.get(k, 0) for k in after if after[k] != before.get(k)}
    # One batch for the orphan scan and the first get, then one per reservation: its clear and
    # the next get (the last get finds the queue empty). Before, each reservation took a get
    # and a clear, and the scan a request of its own.
    assert made == {"batch": 11}
    assert line_count(tmp_path / "in.jsonl") == 1000


def test_a_refused_clear_or_get_inside_the_batch_loses_and_repeats_nothing(
    start_sandbox, tmp_path: Path
) -> None:
    """The batch's clear refused once (its rows stay checkpointed and are cleared on the
    retried run) and its get refused once (nothing reserved, the clear is saved)."""
    sandbox = start_sandbox("--plan", "unlimited")
    ids = set(seed_events(sandbox, 500))
    refused = {"error": "OPERATION_TIME_LIMIT", "status": 429, "times": 1}
    sandbox.admin(
        "faults",
        {
            "rules": [
                {"method": "event.offline.clear", **refused},
                {"method": "event.offline.get", **refused},
            ]
        },
    )
    sink = tmp_path / "in.jsonl"
    env = worker_env(sandbox, tmp_path / "state", B24_RETRY_BASE_SEC="0.01")
    done = run_worker(env, "--drain", "--sink", str(sink), "--limit", "100")
    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stdout)
    assert summary["portal_retries"] >= 1 and summary["cleared"] == 500
    counts = handled_counts(sink)
    assert set(counts) == ids and max(counts.values()) == 1
    assert queue_rows(sandbox) == []
