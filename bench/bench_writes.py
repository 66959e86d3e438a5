"""N ``crm.lead.add`` calls: our --batch-file and call_many against fast-bitrix24 and b24pysdk.

Same sandbox as the export benchmark (standard plan, 50 ms latency), reset before each run;
each run must leave exactly N new leads behind, and the median wall time of --runs is compared.
Target: ceil(N/50) requests, no rejections, wall time at or below the best peer's.

    .venv/bin/python bench/bench_writes.py [--calls 1000] [--latency-ms 50] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from contenders import PARALLEL, lead_fields
from harness import (
    Sandbox,
    b24_argv,
    comparison,
    contender_argv,
    cost,
    median_of,
    run_contender,
)

CLI_ARGS = ("--batch-file", "-", "--parallel", str(PARALLEL), "--confirm-write", "--compact")
CLI = f"b24 --batch-file --parallel {PARALLEL}"
LIBRARY = f"b24 call_many parallel={PARALLEL} (library)"
OURS = (f"{CLI} (CLI)", f"{CLI} (CLI, B24_SERVER=off)", LIBRARY)


def contenders(calls: int) -> dict[str, list[str]]:
    return {
        f"{CLI} (CLI)": b24_argv(*CLI_ARGS),
        f"{CLI} (CLI, B24_SERVER=off)": b24_argv(*CLI_ARGS),
        LIBRARY: contender_argv("write", "b24_call_many", str(calls)),
        "fast-bitrix24 call": contender_argv("write", "fast_bitrix24", str(calls)),
        "b24pysdk call_batches": contender_argv("write", "b24pysdk_call_batches", str(calls)),
    }


def batch_file(calls: int) -> bytes:
    lines = (
        json.dumps({"method": "crm.lead.add", "params": {"fields": lead_fields(i)}})
        for i in range(calls)
    )
    return ("\n".join(lines) + "\n").encode()


def run(sandbox: Sandbox, calls: int, runs: int, timeout_s: float) -> list[dict[str, Any]]:
    figures = []
    stdin = batch_file(calls)
    for name, argv in contenders(calls).items():
        each = [run_once(sandbox, calls, name, argv, stdin, timeout_s) for _ in range(runs)]
        figures.append(median_of(each))
        print(json.dumps(figures[-1]), file=sys.stderr, flush=True)
    return figures


def run_once(
    sandbox: Sandbox, calls: int, name: str, argv: list[str], stdin: bytes, timeout_s: float
) -> dict[str, Any]:
    """One measured run against an empty portal with a full bucket."""
    sandbox.admin("reset", {})
    with tempfile.TemporaryDirectory() as tmp:
        run = run_contender(sandbox, name, argv, Path(tmp), stdin=stdin, timeout_s=timeout_s)
    created = sandbox.total("crm.lead.list")
    complete = run.code == 0 and created == calls
    return {"contender": name, "created": created, **cost(run, complete)}


def report(calls: int, figures: list[dict[str, Any]]) -> str:
    rows, best = comparison(figures, OURS, ("leads created", "created"))
    return (
        f"{calls:,} crm.lead.add, median wall of {len(figures[0]['walls'])} runs (targets: "
        f"{math.ceil(calls / 50)} requests, 0 rejections, "
        f"wall <= best peer's {best} s)\n\n{rows}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5, help="runs per contender")
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    args = parser.parse_args()
    with Sandbox(plan="standard", latency_ms=args.latency_ms) as sandbox:
        figures = run(sandbox, args.calls, args.runs, args.timeout)
    print(report(args.calls, figures))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
