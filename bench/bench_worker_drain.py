"""Offline worker drain throughput against the sandbox portal (unlimited plan, sink handler).

Starts a sandbox, queues N offline events, runs ``offline_sync_worker.py --drain`` as a
subprocess and prints events per second and HTTP requests per 1,000 events (from the
sandbox's own request counter, so nothing the worker does can hide a request). Each event is
fsynced twice (the sink line and the checkpoint journal), so the disk sets the ceiling.

    .venv/bin/python bench/bench_worker_drain.py [--events 10000] [--limit 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import SCRIPTS, Sandbox, clean_env, table


def worker_env(info: dict[str, Any], state: Path) -> dict[str, str]:
    oauth = info["oauth"]
    return clean_env(
        B24_DOMAIN=info["url"],
        B24_AUTH_MODE="oauth",
        B24_CLIENT_ID=oauth["client_id"],
        B24_CLIENT_SECRET=oauth["client_secret"],
        B24_ACCESS_TOKEN=oauth["access_token"],
        B24_REFRESH_TOKEN=oauth["refresh_token"],
        B24_OAUTH_SERVER=oauth["server"],
        B24_STATE_DIR=str(state),
        B24_RATE_LIMITER="off",
    )


def run(events: int, limit: int) -> dict[str, Any]:
    with Sandbox(plan="unlimited") as sandbox:
        sandbox.admin("seed", {"event.offline": events})
        with tempfile.TemporaryDirectory() as tmp:
            sink = Path(tmp) / "inbox.jsonl"
            before = sandbox.admin("stats")
            started = time.monotonic()
            result = subprocess.run(
                [
                    sys.executable,
                    str(SCRIPTS / "offline_sync_worker.py"),
                    "--drain",
                    "--limit",
                    str(limit),
                    "--sink",
                    str(sink),
                    "--log-level",
                    "warning",
                ],
                env=worker_env(sandbox.info, Path(tmp) / "state"),
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.monotonic() - started
            after = sandbox.admin("stats")
            if result.returncode != 0:
                raise SystemExit(f"worker failed ({result.returncode}): {result.stderr}")
            summary = json.loads(result.stdout)
            handled = summary["handled"]
            lines = sink.read_bytes().count(b"\n")
    requests_made = after["requests"] - before["requests"]
    return {
        "events": events,
        "limit": limit,
        "handled": handled,
        "sink_lines": lines,
        "worker_s": summary["duration_s"],
        "wall_s": round(wall, 3),
        "events_per_s": round(handled / summary["duration_s"]),
        "events_per_s_wall": round(handled / wall),
        "http_requests": requests_made,
        "requests_per_1000_events": round(requests_made * 1000 / handled, 2),
        "by_method": {
            k: after["by_method"].get(k, 0) - before["by_method"].get(k, 0)
            for k in after["by_method"]
            if after["by_method"].get(k, 0) != before["by_method"].get(k, 0)
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    figures = run(args.events, args.limit)
    print(
        f"Offline worker drain of {figures['events']:,} events (--limit {figures['limit']}, "
        "sink handler, unlimited plan)\n\n"
        + table(
            [
                "handled",
                "worker s",
                "events/s",
                "events/s incl. start-up",
                "HTTP requests",
                "requests / 1,000 events",
            ],
            [
                [
                    figures["handled"],
                    figures["worker_s"],
                    figures["events_per_s"],
                    figures["events_per_s_wall"],
                    figures["http_requests"],
                    figures["requests_per_1000_events"],
                ]
            ],
        )
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
