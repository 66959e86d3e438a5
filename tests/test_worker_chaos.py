"""Chaos: 5,000 events, a flaky handler, portal faults, and ten SIGKILLs at random moments.

What must hold at the end: nothing lost (every event handled or in the DLQ, the portal queue
empty but for the DLQ's error rows), and no more events handled twice than the worker was
killed (the one window for a repeat is between a handler finishing and its journal line).
"""

from __future__ import annotations

import random
from pathlib import Path

from test_worker_support import (
    duplicates,
    handled_counts,
    kill_repeatedly,
    open_dlq,
    queue_rows,
    run_worker,
    seed_events,
    summary_of,
    worker_env,
)

EVENTS = 5000
KILLS = 10
FAULTS = [
    {"method": "event.offline.*", "error": "INTERNAL_SERVER_ERROR", "status": 500, "rate": 0.01},
    {"method": "event.offline.*", "error": "QUERY_LIMIT_EXCEEDED", "status": 503, "rate": 0.01},
]


def test_kill_9_ten_times_loses_nothing_and_repeats_at_most_one_event_per_kill(
    portal, tmp_path: Path
):
    rng = random.Random(20240518)
    ids = set(seed_events(portal, EVENTS))
    assert len(ids) == EVENTS
    portal.admin("faults", {"rules": FAULTS, "seed": 11})
    sink, dlq = tmp_path / "handled.jsonl", tmp_path / "dlq.jsonl"
    env = worker_env(
        portal,
        tmp_path / "state",
        WORKER_TEST_SINK=str(sink),
        WORKER_TEST_FAIL_RATE="0.05",
        PYTHONHASHSEED="0",
    )
    args = [
        "--drain",
        "--handler",
        "test_worker_support:flaky_sink",
        "--limit",
        "500",
        "--max-retries",
        "1",
        "--retry-delay",
        "0.001",
        "--dlq-file",
        str(dlq),
        "--log-level",
        "warning",
    ]

    kills = kill_repeatedly(
        env, args, sink, rng, kills=KILLS, rounds=3 * KILLS, most_lines=300, most_sleep_s=0.8
    )
    assert kills == KILLS, "the queue drained before all kills happened"

    final = run_worker(env, *args)
    assert final.returncode == 0, final.stderr
    assert summary_of(final.stdout)["queue_empty"] is True

    counts = handled_counts(sink)
    dead = {str(e["event"]["ID"]) for e in open_dlq(dlq).values()}
    assert set(counts) | dead == ids, "an event was neither handled nor dead-lettered"
    assert duplicates(counts) <= kills
    rows = queue_rows(portal)
    assert all(int(row["ERROR"]) == 1 for row in rows), "live rows left on the portal"
    assert {str(row["ID"]) for row in rows} <= dead, "an error row the DLQ does not account for"

    # The DLQ accounts for the error rows: replaying it empties the portal queue.
    portal.admin("faults", {"rules": []})
    replay = run_worker(
        env, "--replay-dlq", "--sink", str(tmp_path / "replayed.jsonl"), "--dlq-file", str(dlq)
    )
    assert replay.returncode == 0, replay.stderr
    assert queue_rows(portal) == []
    assert open_dlq(dlq) == {}
    print(
        f"\nchaos: kills={kills} handled={len(counts)} duplicates={duplicates(counts)} "
        f"dlq={len(dead)} replayed={summary_of(replay.stdout)['replayed']}"
    )
