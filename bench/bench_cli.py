"""Cost of one CLI call: ``b24 user.current`` against the sandbox vs ``curl`` to the same URL.

Each is run ``--runs`` times, alternating so all see the same machine load: ``b24`` as installed
(its warm server up, as after any earlier call), ``curl`` right after it (a pair), ``b24`` with
B24_SERVER=off (every call imports everything), and ``b24 --help``. The headline is the median
of the pairs' b24/curl ratios, so a load swing hits both halves of a pair alike. Unlimited
plan, so the portal's bucket never makes any of them wait; run at 0 ms latency (the pure
client cost) and at the export benchmark's 50 ms (closer to a cloud portal).

Every command starts after a pause of ``PAUSE_S``, as an agent's calls come between its
thoughts: what a command leaves running in the background (the warm server forks the worker
for the next call once a call is over) then slows neither the next command nor its pair's
curl. That work is not hidden: the warm server's CPU per call (the worker that served it and
its successor's start) is a column of its own.

    .venv/bin/python bench/bench_cli.py [--runs 30] [--latency-ms 0 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from b24agent.cli.warm import server as warm_server
from harness import Sandbox, WarmServer, b24_env, cpu_s, table

B24 = str(Path(sys.executable).with_name("b24"))
#: Seconds between commands (see the module docstring).
PAUSE_S = 0.2
#: Long enough for the warm server to have reaped (and so counted) every finished worker.
REAP_WAIT_S = warm_server.CHECK_EVERY_S + 0.5


def timed(argv: list[str], env: dict[str, str]) -> float:
    time.sleep(PAUSE_S)
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def run(latency_ms: int, runs: int) -> dict[str, Any]:
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("bench_cli.py needs curl")
    with (
        Sandbox(plan="unlimited", latency_ms=latency_ms) as sandbox,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server = WarmServer(b24_env(sandbox, Path(tmp) / "state"), Path(tmp) / "rt").start()
        warm, cold = server.env, {**server.env, "B24_SERVER": "off"}
        url = sandbox.webhook_url + "user.current"
        times: dict[str, list[float]] = {"warm": [], "cold": [], "curl": [], "help": []}
        timed([B24, "user.current"], warm)  # writes the state folder, as any first call does
        assert server.proc is not None
        time.sleep(REAP_WAIT_S)
        server_cpu_before = cpu_s(server.proc.pid, reaped_children=True)
        for _ in range(runs):
            times["warm"].append(timed([B24, "user.current"], warm))
            times["curl"].append(timed([curl, "-s", "-f", "-X", "POST", url], warm))
            times["cold"].append(timed([B24, "user.current"], cold))
            times["help"].append(timed([B24, "--help"], warm))
        time.sleep(REAP_WAIT_S)
        server_cpu = cpu_s(server.proc.pid, reaped_children=True) - server_cpu_before
        server.reap()
    median = {name: statistics.median(values) for name, values in times.items()}
    pairs = [b24 / curl for b24, curl in zip(times["warm"], times["curl"], strict=True)]
    return {
        "latency_ms": latency_ms,
        "runs": runs,
        "b24_median_ms": round(median["warm"], 1),
        "b24_cold_median_ms": round(median["cold"], 1),
        "curl_median_ms": round(median["curl"], 1),
        "ratio": round(median["warm"] / median["curl"], 2),
        "pair_ratio": round(statistics.median(pairs), 2),
        "pair_ratio_range": [round(min(pairs), 2), round(max(pairs), 2)],
        "cold_ratio": round(median["cold"] / median["curl"], 2),
        "help_median_ms": round(median["help"], 1),
        "server_cpu_per_call_ms": round(server_cpu * 1000 / runs, 1),
    }


def report(figures: list[dict[str, Any]]) -> str:
    rows = [
        [
            f["latency_ms"],
            f["b24_median_ms"],
            f["curl_median_ms"],
            f"{f['pair_ratio']} ({f['pair_ratio_range'][0]}-{f['pair_ratio_range'][1]})",
            f["ratio"],
            f["b24_cold_median_ms"],
            f["cold_ratio"],
            f["help_median_ms"],
            f["server_cpu_per_call_ms"],
        ]
        for f in figures
    ]
    return (
        f"CLI per call, {figures[0]['runs']} paired runs (target: median b24/curl of the pairs "
        "<= 2x at 0 ms, --help < 150 ms); "
        "b24 as installed (warm server), and with B24_SERVER=off\n\n"
        + table(
            [
                "portal latency ms",
                "b24 user.current ms",
                "curl ms",
                "b24/curl, median of pairs (range)",
                "median b24 / median curl",
                "B24_SERVER=off ms",
                "off / curl",
                "b24 --help ms",
                "warm server CPU per call ms",
            ],
            rows,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50])
    args = parser.parse_args()
    figures = [run(latency, args.runs) for latency in args.latency_ms]
    print(report(figures))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
