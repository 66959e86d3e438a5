"""Cost of one CLI call: ``b24 user.current`` against the sandbox vs ``curl`` to the same URL.

Each is run ``--runs`` times, alternating so both see the same machine load, and the medians
are compared; ``b24 --help`` start-up is timed the same way. Unlimited plan, so the portal's
bucket never makes either wait; run at 0 ms latency (the pure client overhead) and at the
export benchmark's 50 ms (closer to a cloud portal).

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

from harness import Sandbox, b24_env, table

B24 = str(Path(sys.executable).with_name("b24"))


def timed(argv: list[str], env: dict[str, str]) -> float:
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
        env = b24_env(sandbox, Path(tmp) / "state")
        url = sandbox.webhook_url + "user.current"
        ours, theirs, helps = [], [], []
        timed([B24, "user.current"], env)  # first run writes .pyc files and the state dir
        for _ in range(runs):
            ours.append(timed([B24, "user.current"], env))
            theirs.append(timed([curl, "-s", "-f", "-X", "POST", url], env))
            helps.append(timed([B24, "--help"], env))
    return {
        "latency_ms": latency_ms,
        "runs": runs,
        "b24_median_ms": round(statistics.median(ours), 1),
        "curl_median_ms": round(statistics.median(theirs), 1),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "help_median_ms": round(statistics.median(helps), 1),
    }


def report(figures: list[dict[str, Any]]) -> str:
    rows = [
        [f["latency_ms"], f["b24_median_ms"], f["curl_median_ms"], f["ratio"], f["help_median_ms"]]
        for f in figures
    ]
    return (
        f"CLI per call, median of {figures[0]['runs']} (target: b24 <= 3x curl, --help < 150 ms)"
        "\n\n"
        + table(
            ["portal latency ms", "b24 user.current ms", "curl ms", "b24 / curl", "b24 --help ms"],
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
