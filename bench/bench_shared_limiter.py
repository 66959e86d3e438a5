"""N processes hammering one standard-plan sandbox through the shared file limiter.

Each process makes M reads as fast as its limiter lets it. The portal's bucket (2/s, capacity 50)
allows at best ``(N*M - 50) / 2`` seconds for the whole run, i.e. ``N*M / that`` calls per
second; the script prints the calls per second achieved, that allowance, their ratio (target:
at least 95%) and the sandbox's own count of QUERY_LIMIT_EXCEEDED answers (target: 0).

    .venv/bin/python bench/bench_shared_limiter.py [--processes 8] [--calls 40] [--plan standard]
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

from harness import BENCH, PLANS, Sandbox, clean_env, table


def run(processes: int, calls: int, plan: str) -> dict[str, Any]:
    rate, burst = PLANS[plan]
    with Sandbox(plan=plan) as sandbox, tempfile.TemporaryDirectory() as tmp:
        empty, go = Path(tmp) / "empty.env", Path(tmp) / "go"
        empty.write_text("")
        env = clean_env(
            B24_WEBHOOK_URL=sandbox.webhook_url,
            B24_STATE_DIR=str(Path(tmp) / "state"),
            B24_RATE_LIMITER="file",
            B24_RATE_LIMITER_RATE=str(rate),
            B24_RATE_LIMITER_BURST=str(burst),
        )
        workers = [
            subprocess.Popen(
                [sys.executable, str(BENCH / "limiter_worker.py"), str(go), str(empty), str(calls)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        time.sleep(1.0)  # every worker imported and waiting
        started = time.time()
        go.touch()
        reports = [json.loads(w.communicate()[0]) for w in workers]
        stats = sandbox.counters()
    elapsed = max(r["finished"] for r in reports) - started
    total = processes * calls
    ideal = max(0.0, (total - burst) / rate)
    return {
        "plan": plan,
        "processes": processes,
        "calls": total,
        "requests": stats["requests"],
        "rejections": stats["http_rejections"],
        "failed": sum(r["failed"] for r in reports),
        "elapsed_s": round(elapsed, 1),
        "ideal_s": round(ideal, 1),
        "calls_per_s": round(total / elapsed, 3),
        "allowance_per_s": round(total / ideal, 3) if ideal else None,
        "share_of_allowance": round(ideal / elapsed, 3) if ideal else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--plan", choices=sorted(PLANS), default="standard")
    args = parser.parse_args()
    f = run(args.processes, args.calls, args.plan)
    rate, burst = PLANS[args.plan]
    print(
        f"{f['processes']} processes x {args.calls} calls sharing one {f['plan']} portal "
        f"({rate:g}/s, capacity {burst}); target >= 95% of the allowance, 0 rejections\n\n"
        + table(
            [
                "calls",
                "requests seen",
                "rejections",
                "failed",
                "elapsed s",
                "bucket's best s",
                "calls/s",
                "allowance/s",
                "share of allowance",
            ],
            [
                [
                    f["calls"],
                    f["requests"],
                    f["rejections"],
                    f["failed"],
                    f["elapsed_s"],
                    f["ideal_s"],
                    f["calls_per_s"],
                    f["allowance_per_s"],
                    f"{f['share_of_allowance']:.1%}" if f["share_of_allowance"] else "n/a",
                ]
            ],
        )
    )
    print(json.dumps(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
