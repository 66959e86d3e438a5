"""Offline worker drain: on a standard plan against the bucket's bound, and on an unlimited one.

Starts a sandbox, queues N offline events, runs ``offline_sync_worker.py --drain`` (sink
handler) as a subprocess and reports its wall time, events per second and HTTP requests per
1,000 events, from the sandbox's own counters, so nothing the worker does can hide a request.

On a standard plan (50 requests at once, then 2/s) at 50 ms latency the shared limiter is on,
as a user runs it; a drain that needs R requests (one get, then one batch per reservation with
its clear and the next get) cannot take less than (R - 50) / 2 s. The issue's bound for
100,000 events is that of 1,000-event reservations: 101 requests, 25.5 s. Target: at most 1.1x
of it, no rejections. On an unlimited plan: events per second.

    .venv/bin/python bench/bench_worker_drain.py [--events 100000] [--limit N] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from b24agent.cli.sandbox_env import oauth_env
from harness import (
    SCRIPTS,
    PeakWatch,
    Sandbox,
    bucket_bound_s,
    clean_env,
    limiter_floor_s,
    table,
)

#: Events per reservation of the issue's bound (25.5 s for 100,000 on a standard plan).
BOUND_LIMIT = 1000


def worker_env(info: dict[str, Any], state: Path, limiter: bool) -> dict[str, str]:
    return clean_env(
        **oauth_env(info["url"], info["oauth"]),
        B24_STATE_DIR=str(state),
        B24_RATE_LIMITER="file" if limiter else "off",
    )


def drain(plan: str, latency_ms: int, events: int, limit: int | None) -> dict[str, Any]:
    """One drain of ``events`` seeded events; ``limit`` None is the worker's default."""
    with Sandbox(plan=plan, latency_ms=latency_ms) as sandbox:
        sandbox.admin("seed", {"event.offline": events})
        with tempfile.TemporaryDirectory() as tmp:
            sink = Path(tmp) / "inbox.jsonl"
            before = sandbox.admin("stats")
            argv = [
                sys.executable,
                str(SCRIPTS / "offline_sync_worker.py"),
                "--drain",
                "--sink",
                str(sink),
                "--log-level",
                "warning",
                *(["--limit", str(limit)] if limit else []),
            ]
            env = worker_env(sandbox.info, Path(tmp) / "state", limiter=plan != "unlimited")
            started = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            peaks = PeakWatch(proc.pid)
            out, err = proc.communicate(timeout=900)
            wall = time.perf_counter() - started
            peak = peaks.stop()
            after = sandbox.admin("stats")
            lines = sink.read_bytes().count(b"\n") if sink.exists() else 0
            left = sandbox.count("event.offline")
    summary = json.loads(out) if proc.returncode == 0 else {}
    made = after["requests"] - before["requests"]
    handled = summary.get("handled", 0)
    return {
        "plan": plan,
        "latency_ms": latency_ms,
        "events": events,
        "limit": limit or "default",
        "complete": proc.returncode == 0 and handled == lines == events and left == 0,
        "error": "" if proc.returncode == 0 else err.decode(errors="replace")[-300:],
        "handled": handled,
        "sink_lines": lines,
        "left_on_portal": left,
        "wall_s": round(wall, 2),
        "events_per_s": round(handled / wall) if wall else 0,
        "http_requests": made,
        "http_rejections": after["http_rejections"] - before["http_rejections"],
        "requests_per_1000_events": round(made * 1000 / max(handled, 1), 2),
        "peak_mb": round(peak, 1),
        "by_method": {
            k: after["by_method"].get(k, 0) - before["by_method"].get(k, 0)
            for k in after["by_method"]
            if after["by_method"].get(k, 0) != before["by_method"].get(k, 0)
        },
    }


def bound_for(events: int) -> tuple[int, float]:
    """(requests, seconds) of the issue's bound: 1,000-event reservations on a standard plan."""
    needed = math.ceil(events / BOUND_LIMIT) + 1
    return needed, bucket_bound_s(needed)


def report(figures: list[dict[str, Any]], events: int) -> str:
    needed, bound = bound_for(events)
    rows = []
    for f in figures:
        limited = f["plan"] != "unlimited" and bound > 0
        rows.append(
            [
                f"{f['plan']}, {f['latency_ms']} ms",
                f["limit"],
                f["handled"] if f["complete"] else f"{f['handled']} (FAILED: {f['error']})",
                f["wall_s"],
                f"{f['wall_s'] / bound:.3f} of {bound:.1f} s" if limited else "n/a",
                f"{limiter_floor_s(f['http_requests']):.1f}" if limited else "n/a",
                f["events_per_s"],
                f["http_requests"],
                f["http_rejections"],
                f["requests_per_1000_events"],
                f["peak_mb"],
            ]
        )
    return (
        f"Offline worker drain of {events:,} events, sink handler (target on the standard "
        f"plan: wall <= 1.1x the bucket's bound for {BOUND_LIMIT:,}-event reservations, "
        f"{needed} requests: {bound:.1f} s; no rejections)\n\n"
        + table(
            [
                "plan",
                "--limit",
                "handled",
                "wall s",
                "wall / bound",
                "our limiter's floor s, for the requests made",
                "events/s",
                "HTTP requests",
                "HTTP rejections",
                "requests / 1,000 events",
                "peak MB",
            ],
            rows,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--limit", type=int, nargs="*", default=[], help="default: the worker's")
    parser.add_argument("--plans", nargs="+", default=["standard", "unlimited"])
    args = parser.parse_args()
    figures = []
    _, bound = bound_for(args.events)
    for plan in args.plans:
        for limit in args.limit or [None]:
            latency = 50 if plan == "standard" else 0
            figures.append({**drain(plan, latency, args.events, limit), "bound_s": bound})
            print(json.dumps(figures[-1]), file=sys.stderr, flush=True)
    print(report(figures, args.events))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
