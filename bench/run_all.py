"""Run every benchmark one after another (never two at once, so none skews another) and write
their tables, the machine and the command into one Markdown report.

    .venv/bin/python bench/run_all.py [--results bench/RESULTS.md] [--quick]

Everything from the line ``<!-- analysis -->`` on in an existing report is kept: that part is
written by hand (which targets were met, what limits the others) and refers to the figures above.

``--quick`` shrinks every workload (10,000 leads only, 200 writes, 10 CLI runs, 4 x 20 shared
calls, 2,000 events) to check the harness in about a minute; its figures are not the targets'.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from harness import BENCH

FULL: list[tuple[str, list[str]]] = [
    ("1. Full export (standard plan, 50 ms latency)", ["bench_export.py"]),
    ("2. 1,000 crm.lead.add (standard plan, 50 ms latency)", ["bench_writes.py"]),
    ("3. CLI cost per call", ["bench_cli.py"]),
    ("4. Eight processes sharing one portal", ["bench_shared_limiter.py"]),
    ("5. Offline worker drain", ["bench_worker_drain.py"]),
]
ANALYSIS_MARKER = "<!-- analysis -->"
QUICK_ARGS: dict[str, list[str]] = {
    "bench_export.py": ["--leads", "10000", "--runs", "1"],
    "bench_writes.py": ["--calls", "200", "--runs", "1"],
    "bench_cli.py": ["--runs", "10"],
    "bench_shared_limiter.py": ["--processes", "4", "--calls", "20"],
    "bench_worker_drain.py": ["--events", "2000"],
}


def machine() -> str:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}"
    )


def run_one(script: str, quick: bool) -> tuple[str, float]:
    """The script's report (its stdout without the trailing JSON line) and its run time."""
    argv = [sys.executable, str(BENCH / script), *(QUICK_ARGS[script] if quick else [])]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = done.stdout.rstrip("\n").splitlines()
    return "\n".join(lines[:-1]).strip(), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="also write the report to this file")
    parser.add_argument("--quick", action="store_true", help="small workloads, harness check")
    args = parser.parse_args()
    command = "make bench" if not args.quick else "python bench/run_all.py --quick"
    sections = [
        "# Benchmark results",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {machine()}. Peers: "
        "fast-bitrix24 and b24pysdk from the `bench` extra in pyproject.toml, run unchanged "
        "(b24pysdk's https base URL pointed at the plain-HTTP sandbox). Every contender runs in "
        "its own process; requests and rejections are the sandbox's own counters, peak memory "
        "is the child's ru_maxrss.",
    ]
    for title, (script, *_) in FULL:
        print(f"running {script} ...", file=sys.stderr, flush=True)
        report, elapsed = run_one(script, args.quick)
        sections.append(f"## {title}\n\n{report}\n\n(`bench/{script}`, {elapsed:.0f} s)")
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.results:
        old = args.results.read_text() if args.results.exists() else ""
        kept = old[old.index(ANALYSIS_MARKER) :] if ANALYSIS_MARKER in old else ""
        args.results.write_text(text + ("\n" + kept if kept else ""))
        print(f"written to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
