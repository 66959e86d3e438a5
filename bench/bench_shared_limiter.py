"""N processes hammering one standard-plan sandbox through the shared file limiter.

Each process makes M reads as fast as its limiter lets it. The portal's bucket (2/s, capacity 50)
allows at best ``(N*M - 50) / 2`` seconds for the whole run; the script prints the measured time,
that ideal, their ratio and the sandbox's own count of QUERY_LIMIT_EXCEEDED answers (the goal: 0,
within 10% of the ideal).

    .venv/bin/python bench/bench_shared_limiter.py [--processes 8] [--calls 40] [--plan standard]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = ROOT / "skills" / "bitrix24-agent" / "scripts" / "sandbox_portal.py"
PLANS = {"standard": (2.0, 50), "enterprise": (5.0, 250)}

WORKER = ROOT / "bench" / "limiter_worker.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--plan", choices=sorted(PLANS), default="standard")
    args = parser.parse_args()
    rate, burst = PLANS[args.plan]

    portal = subprocess.Popen(
        [sys.executable, str(SANDBOX), "--port", "0", "--plan", args.plan],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert portal.stdout is not None
    info = json.loads(portal.stdout.readline())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            empty, go = Path(tmp) / "empty.env", Path(tmp) / "go"
            empty.write_text("")
            env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
            env.update(
                B24_WEBHOOK_URL=info["webhook_url"],
                B24_STATE_DIR=str(Path(tmp) / "state"),
                B24_RATE_LIMITER="file",
                B24_RATE_LIMITER_RATE=str(rate),
                B24_RATE_LIMITER_BURST=str(burst),
            )
            workers = [
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(go), str(empty), str(args.calls)],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.processes)
            ]
            time.sleep(1.0)
            started = time.time()
            go.touch()
            reports = [json.loads(w.communicate()[0]) for w in workers]
        elapsed = max(r["finished"] for r in reports) - started
        stats = requests.get(
            f"{info['url']}/_sandbox/stats",
            headers={"X-Sandbox-Admin": info["admin_token"]},
            timeout=30,
        ).json()
    finally:
        portal.terminate()
        portal.wait(timeout=10)

    total = args.processes * args.calls
    ideal = max(0.0, (total - burst) / rate)
    print(f"plan {args.plan}: {rate:g}/s, capacity {burst}")
    print(f"processes x calls      {args.processes} x {args.calls} = {total}")
    print(f"requests seen          {stats['requests']}")
    print(f"QUERY_LIMIT_EXCEEDED   {stats['rate_limit_rejections']}")
    print(f"failed calls           {sum(r['failed'] for r in reports)}")
    print(f"elapsed                {elapsed:.1f} s")
    print(f"bucket allows at best  {ideal:.1f} s")
    ratio = f"{elapsed / ideal:.3f}" if ideal else "n/a"
    print(f"ratio                  {ratio}")


if __name__ == "__main__":
    main()
