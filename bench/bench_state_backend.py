"""Per-call cost of the Redis state backend against the file backend, as a ratio in one run.

One process makes N ``user.current`` calls through an OAuth client against an unlimited sandbox
(each call reads the token store and takes a limiter step), once per backend: the default file
backend and a local redis-server (started here: temp folder, loopback, ``--save ''``). Rounds
interleave (file, redis, file, redis, ...) so both see the same machine load; the table shows
each backend's median microseconds per call and the ratio redis / file.

    .venv/bin/python bench/bench_state_backend.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, Sandbox, table

sys.path.insert(0, str(ROOT / "tests"))
from b24agent.cli.sandbox_env import oauth_env
from b24agent.rest.client import Bitrix24Client
from b24agent.settings import load_settings
from redis_support import RedisServer


def per_call_us(env: dict[str, str], calls: int) -> float:
    with Bitrix24Client(load_settings(environ=env)) as client:
        client.call("user.current")  # warm: token store seeded, connections open
        started = time.perf_counter()
        for _ in range(calls):
            client.call("user.current")
        return (time.perf_counter() - started) / calls * 1e6


def run(calls: int, rounds: int) -> dict[str, Any]:
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            base = {
                **oauth_env(sandbox.url, sandbox.info["oauth"]),
                "HOME": tmp,
                "B24_RATE_LIMITER": "file",
                "B24_RATE_LIMITER_RATE": "100000",
                "B24_RATE_LIMITER_BURST": "100000",
            }
            envs = {
                "file": {**base, "B24_STATE_DIR": str(Path(tmp) / "file")},
                "redis": {
                    **base,
                    "B24_STATE_DIR": str(Path(tmp) / "redis-host"),
                    "B24_STATE_BACKEND": server.url,
                },
            }
            times: dict[str, list[float]] = {"file": [], "redis": []}
            for _ in range(rounds):
                for name, env in envs.items():
                    times[name].append(per_call_us(env, calls))
        finally:
            server.stop()
    file_us, redis_us = statistics.median(times["file"]), statistics.median(times["redis"])
    return {
        "calls": calls,
        "rounds": rounds,
        "file_us": round(file_us, 1),
        "redis_us": round(redis_us, 1),
        "ratio": round(redis_us / file_us, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = run(args.calls, args.rounds)
    print(
        f"{figures['calls']} calls x {figures['rounds']} rounds per backend, interleaved; "
        "median per call (a sandbox call on loopback, OAuth token store, shared limiter)\n"
    )
    print(
        table(
            ["backend", "us per call", "ratio to file"],
            [
                ["file", figures["file_us"], "1.000"],
                ["redis", figures["redis_us"], f"{figures['ratio']:.3f}"],
            ],
        )
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
