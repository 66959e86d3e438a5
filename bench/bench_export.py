"""Full export of N seeded leads: our CLI and library against fast-bitrix24 and b24pysdk.

Standard plan (2 requests/s, capacity 50) and 50 ms latency per answer, like a real cloud
portal. The leads are seeded once per size; before each run the bucket is refilled, so every
run starts alike. Contenders run interleaved, ``--runs`` each; each must return every id
exactly once, or its row says FAILED. The sandbox's own CPU over the run's wall time is shown,
to make sure the figures measure the contenders, not the sandbox.

    .venv/bin/python bench/bench_export.py [--leads 10000 100000] [--latency-ms 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import (
    COLD,
    WARM,
    Measured,
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

EXPORT = ("crm.lead.list", "--all", "--output", "jsonl", "--compact")
CONTENDERS: dict[str, list[str]] = {
    f"b24 --all {WARM}": b24_argv(*EXPORT),
    f"b24 --all {COLD}": b24_argv(*EXPORT),
    "b24 iter_all (library)": contender_argv("export", "b24_library"),
    "fast-bitrix24 get_all": contender_argv("export", "fast_bitrix24"),
    "b24pysdk as_list": contender_argv("export", "b24pysdk_as_list"),
    "b24pysdk as_list_fast": contender_argv("export", "b24pysdk_as_list_fast"),
}
OURS = (f"b24 --all {WARM}", f"b24 --all {COLD}", "b24 iter_all (library)")


def exported(run: Measured, cli: bool) -> tuple[int, int]:
    """(rows, distinct ids) the contender returned."""
    if not cli:
        summary = run.json()
        return summary["rows"], summary["ids"]
    rows, ids = 0, set()
    with open(run.out_path, "rb") as lines:
        for line in lines:
            rows += 1
            ids.add(int(json.loads(line)["ID"]))
    return rows, len(ids)


def run_once(
    sandbox: Sandbox, leads: int, name: str, argv: list[str], timeout_s: float
) -> dict[str, Any]:
    """One measured export from a full bucket."""
    sandbox.admin("refill", {})
    with tempfile.TemporaryDirectory() as tmp:
        run = run_contender(sandbox, name, argv, Path(tmp), timeout_s=timeout_s)
        rows, ids = exported(run, "(CLI" in name) if run.code == 0 else (0, 0)
    complete = run.code == 0 and rows == ids == leads
    short = "" if complete or run.code else f"returned {rows} rows, {ids} distinct ids"
    return {"leads": leads, "rows": rows, **cost(run, complete, short)}


def run_size(
    sandbox: Sandbox, leads: int, runs: int, timeout_s: float, names: list[str]
) -> list[dict[str, Any]]:
    sandbox.admin("reset", {})
    sandbox.admin("seed", {"crm.lead": leads})
    assert sandbox.count("crm.lead") == leads
    results = Results()
    for _, name in interleaved(names, runs):
        figure = guarded(run_once, name, sandbox, leads, name, CONTENDERS[name], timeout_s)
        results.add(name, figure)
    return [{**f, "leads": leads} for f in results.summaries(names)]


def report(figures: list[dict[str, Any]]) -> str:
    """One table per size, with our/best-peer wall-time ratio and the request target."""
    out = []
    for leads in sorted({f["leads"] for f in figures}):
        group = [f for f in figures if f["leads"] == leads]
        rows, best = comparison(group, OURS, ("rows, each id once", "rows"))
        target = math.ceil(leads / 2500) + 1
        out.append(
            f"Export of {leads:,} leads, {group[0]['runs']} interleaved runs per contender "
            f"(targets: requests <= {target}, no errors, wall <= best peer's {best} s)\n\n{rows}"
        )
    return "\n\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="runs per contender and size")
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    parser.add_argument(
        "--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS), metavar="NAME"
    )
    args = parser.parse_args()
    with Sandbox(plan="standard", latency_ms=args.latency_ms) as sandbox:
        figures = [
            f for n in args.leads for f in run_size(sandbox, n, args.runs, args.timeout, args.only)
        ]
    print(report(figures))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
