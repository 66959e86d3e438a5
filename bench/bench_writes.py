"""N ``crm.lead.add`` calls: our --batch-file and call_many against fast-bitrix24 and b24pysdk.

Same sandbox as the export benchmark (standard plan, 50 ms latency), reset before each run;
each run must leave exactly N new leads behind (counted by an admin call, outside the bucket).
Contenders run interleaved, ``--runs`` each, and their median wall times are compared.
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
    COLD,
    WARM,
    Results,
    Sandbox,
    b24_argv,
    comparison,
    contender_argv,
    cost,
    guarded,
    interleaved,
    run_contender,
)

CLI_ARGS = ("--batch-file", "-", "--parallel", str(PARALLEL), "--confirm-write", "--compact")
CLI = f"b24 --batch-file --parallel {PARALLEL}"
LIBRARY = f"b24 call_many parallel={PARALLEL} (library)"
OURS = (f"{CLI} {WARM}", f"{CLI} {COLD}", LIBRARY)


def contenders(calls: int) -> dict[str, list[str]]:
    return {
        f"{CLI} {WARM}": b24_argv(*CLI_ARGS),
        f"{CLI} {COLD}": b24_argv(*CLI_ARGS),
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
    stdin = batch_file(calls)
    argvs = contenders(calls)
    results = Results()
    for _, name in interleaved(list(argvs), runs):
        figure = guarded(run_once, name, sandbox, calls, name, argvs[name], stdin, timeout_s)
        results.add(name, figure)
    return results.summaries(list(argvs))


def run_once(
    sandbox: Sandbox, calls: int, name: str, argv: list[str], stdin: bytes, timeout_s: float
) -> dict[str, Any]:
    """One measured run against an empty portal with a full bucket."""
    sandbox.admin("reset", {})
    with tempfile.TemporaryDirectory() as tmp:
        run = run_contender(sandbox, name, argv, Path(tmp), stdin=stdin, timeout_s=timeout_s)
    created = sandbox.count("crm.lead")
    complete = run.code == 0 and created == calls
    short = "" if complete or run.code else f"left {created} leads, not {calls}"
    return {"created": created, **cost(run, complete, short)}


def report(calls: int, figures: list[dict[str, Any]]) -> str:
    rows, best = comparison(figures, OURS, ("leads created", "created"))
    return (
        f"{calls:,} crm.lead.add, {figures[0]['runs']} interleaved runs per contender (targets: "
        f"{math.ceil(calls / 50)} requests, no rejections, "
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
