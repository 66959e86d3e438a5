"""Run every benchmark one after another (never two at once, so none skews another) and write
their tables, the machine and the command into one Markdown report.

    .venv/bin/python bench/run_all.py [--results bench/RESULTS.md] [--quick]

Everything from the line ``<!-- analysis -->`` on in an existing report is kept: that part is
written by hand (which targets were met, what limits the others) and refers to the figures above.

``--quick`` shrinks every workload (10,000 leads once, 200 writes, a 150,000-lead export and
3,000 writes past the bucket, 10 CLI pairs, 4 x 20 shared calls, 20,000 events) to check the
harness in a few minutes; its figures are not the targets'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import BENCH, limiter_floor_s

FULL: list[tuple[str, str]] = [
    ("1. Full export (standard plan, 50 ms latency)", "bench_export.py"),
    ("2. 1,000 crm.lead.add (standard plan, 50 ms latency)", "bench_writes.py"),
    ("3. Work past the bucket: 500,000-lead export, 10,000 writes", "bench_bound.py"),
    ("4. CLI cost per call", "bench_cli.py"),
    ("5. Offline worker drain", "bench_worker_drain.py"),
    ("6. Eight processes sharing one portal", "bench_shared_limiter.py"),
    ("7. Redis state backend against the file backend, per call", "bench_state_backend.py"),
    ("8. Warm server: the caller's confinement checked on each call", "bench_warm_check.py"),
]
ANALYSIS_MARKER = "<!-- analysis -->"
QUICK_ARGS: dict[str, list[str]] = {
    "bench_export.py": ["--leads", "10000", "--runs", "1"],
    "bench_writes.py": ["--calls", "200", "--runs", "1"],
    "bench_bound.py": ["--leads", "150000", "--calls", "3000"],
    "bench_cli.py": ["--runs", "10"],
    "bench_shared_limiter.py": ["--processes", "4", "--calls", "20"],
    "bench_worker_drain.py": ["--events", "20000"],
    "bench_state_backend.py": ["--calls", "100", "--rounds", "3"],
    "bench_warm_check.py": ["--checks", "1000", "--rounds", "3"],
}
#: The full run's arguments where they differ from each script's defaults.
FULL_ARGS: dict[str, list[str]] = {
    "bench_worker_drain.py": ["--limit", "1000", "0"],
}


def machine() -> str:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}"
    )


def run_one(script: str, quick: bool) -> tuple[str, Any, float]:
    """The script's report (its stdout without the trailing JSON line), that JSON line's
    figures, and its run time. A script that fails is reported as such, and the rest run."""
    extra = QUICK_ARGS[script] if quick else FULL_ARGS.get(script, [])
    argv = [sys.executable, str(BENCH / script), *extra]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        return f"**FAILED** (exit {done.returncode}):\n\n    " + "\n    ".join(tail), None, elapsed
    lines = done.stdout.rstrip("\n").splitlines()
    return "\n".join(lines[:-1]).strip(), json.loads(lines[-1]), elapsed


def _by_name(figures: Any, name: str) -> dict[str, Any] | None:
    return next((f for f in figures or [] if f.get("contender") == name), None)


def _best_peer(figures: list[dict[str, Any]], ours: tuple[str, ...]) -> dict[str, Any] | None:
    peers = [f for f in figures if f["contender"] not in ours and f["complete"]]
    return min(peers, key=lambda f: f["wall_s"]) if peers else None


def _peer_lines(label: str, group: list[dict[str, Any]], ours: tuple[str, ...]) -> list[str]:
    """Each of our rows over the best complete peer's median, and every failed contender."""
    best = _best_peer(group, ours)
    lines = []
    for name in ours:
        mine = _by_name(group, name)
        if mine and best:
            lines.append(
                f"- {label}: {name} {mine['wall_s']:.2f} s / {best['contender']} "
                f"{best['wall_s']:.2f} s = **{mine['wall_s'] / best['wall_s']:.2f}**"
                f"{'' if mine['complete'] else ' (FAILED)'}; sandbox CPU "
                f"{mine['sandbox_share']:.0%} of our wall, {best['sandbox_share']:.0%} of "
                "the peer's"
            )
    failed = [f["contender"] for f in group if not f["complete"]]
    if failed:
        lines.append(f"- {label}: FAILED: {', '.join(failed)}")
    return lines


def headline(results: dict[str, Any]) -> str:
    """The ratios the issue asks for, one line each, from the scripts' JSON figures."""
    from bench_export import OURS as EXPORT_OURS
    from bench_writes import OURS as WRITE_OURS

    lines = []
    export = results.get("bench_export.py") or []
    for leads in sorted({f["leads"] for f in export}):
        group = [f for f in export if f["leads"] == leads]
        lines += _peer_lines(f"Export {leads:,}", group, EXPORT_OURS)
    writes = results.get("bench_writes.py") or []
    if writes:
        lines += _peer_lines(f"{writes[0]['created']:,} writes", writes, WRITE_OURS)
    for f in results.get("bench_bound.py") or []:
        lines.append(
            f"- {f['contender']}: {f['wall_s']:.2f} s / bucket bound {f['bound_s']:.1f} s = "
            f"**{f['ratio']:.3f}** (target <= 1.05; our limiter's floor {f['floor_s']:.1f} s = "
            f"{f['floor_s'] / f['bound_s']:.3f}), {f['http_rejections']} rejections"
            f"{'' if f['complete'] else ' (FAILED)'}"
        )
    for f in results.get("bench_worker_drain.py") or []:
        if f["plan"] == "standard" and f["bound_s"]:
            lines.append(
                f"- Drain {f['events']:,} events, standard plan, {f['latency_ms']} ms, --limit "
                f"{f['limit']}: {f['wall_s']:.2f} s / bound {f['bound_s']:.1f} s = "
                f"**{f['wall_s'] / f['bound_s']:.3f}** (target <= 1.1; our limiter's floor "
                f"for its {f['http_requests']} requests {limiter_floor_s(f['http_requests']):.1f} "
                f"s), "
                f"{f['http_rejections']} rejections{'' if f['complete'] else ' (FAILED)'}"
            )
        else:
            lines.append(
                f"- Drain {f['events']:,} events, {f['plan']} plan, --limit {f['limit']}: "
                f"**{f['events_per_s']:,} events/s** ({f['wall_s']:.2f} s)"
                f"{'' if f['complete'] else ' (FAILED)'}"
            )
    for f in results.get("bench_cli.py") or []:
        lines.append(
            f"- CLI at {f['latency_ms']} ms latency: b24/curl median of {f['runs']} pairs "
            f"**{f['pair_ratio']:.2f}** (range {f['pair_ratio_range'][0]}-"
            f"{f['pair_ratio_range'][1]}; {f['b24_median_ms']} ms vs {f['curl_median_ms']} ms)"
        )
    return "\n".join(lines)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="also write the report to this file")
    parser.add_argument("--quick", action="store_true", help="small workloads, harness check")
    args = parser.parse_args()
    command = "make bench" if not args.quick else "python bench/run_all.py --quick"
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load()
    sections: list[str] = []
    results: dict[str, Any] = {}
    for title, script in FULL:
        print(f"running {script} ...", file=sys.stderr, flush=True)
        before = load()
        report, figures, elapsed = run_one(script, args.quick)
        results[script] = figures
        sections.append(
            f"## {title}\n\n{report}\n\n(`bench/{script}`, {elapsed:.0f} s, load average "
            f"before {before}, after {load()})"
        )
    head = [
        "# Benchmark results",
        f"Made by `{command}`, started {started}: {machine()}. Load average (1, 5, 15 min) "
        f"{load_before} at the start, {load()} at the end; the machine is shared, so every "
        "comparison runs its contenders interleaved (A B C, A B C, ...) and shows medians and "
        "ranges. Peers: fast-bitrix24 and b24pysdk from the `bench` extra in pyproject.toml, "
        "run unchanged (b24pysdk's https base URL pointed at the plain-HTTP sandbox). Every "
        "contender runs in its own process; requests and rejections are the sandbox's own "
        "counters; peak memory is the largest of every process that did the work (for our CLI: "
        "the caller, the warm server and the worker that served the call).",
        "## Ratios\n\n" + headline(results),
    ]
    text = "\n\n".join(head + sections) + "\n"
    print(text)
    if args.results:
        old = args.results.read_text() if args.results.exists() else ""
        kept = old[old.index(ANALYSIS_MARKER) :] if ANALYSIS_MARKER in old else ""
        args.results.write_text(text + ("\n" + kept if kept else ""))
        print(f"written to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
