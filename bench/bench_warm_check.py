"""Cost of the warm server's confinement check (review 7, H2), which runs on every served call.

Before READY, a worker reads the connecting process's confinement from ``/proc`` (namespaces,
root, cgroup, ids, capabilities, ``no_new_privs``, seccomp, LSM labels) and compares it with the
server's own, read once at start (``cli/warm/worker.py``, ``confinement.py``). This measures
``worker.confined_as_this_server`` against a real connected process, unconfined (served) and
under ``no_new_privs`` (refused), and the caller's side: ``confinement.of_self``, which every
``b24`` start now runs for its socket's name. Target: the worker's check under 0.1 ms.

    .venv/bin/python bench/bench_warm_check.py [--checks 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from b24agent.cli.warm import confinement, worker
from harness import table

#: Waits, connected, until its stdin closes: the caller blocked in its connection.
PEER = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "sys.stdin.read()"
)
PR_SET_NO_NEW_PRIVS = 38


def _no_new_privs() -> None:
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _per_call_us(job: Callable[[], object], checks: int, rounds: int) -> list[float]:
    """The mean time of one ``job`` in each round, in microseconds."""
    means = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(checks):
            job()
        means.append((time.perf_counter() - started) / checks * 1e6)
    return means


def _against_peer(
    name: str, preexec: Callable[[], None] | None, checks: int, rounds: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="b24c-") as folder:
        path = os.path.join(folder, "s")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, path], stdin=subprocess.PIPE, preexec_fn=preexec
        )
        conn, _ = listener.accept()
        try:
            verdict = worker.confined_as_this_server(conn, peer.pid)
            means = _per_call_us(
                lambda: worker.confined_as_this_server(conn, peer.pid), checks, rounds
            )
        finally:
            conn.close()
            peer.communicate(b"")
            listener.close()
    return {
        "case": name,
        "served": verdict,
        "median_us": statistics.median(means),
        "range_us": [min(means), max(means)],
    }


def run(checks: int, rounds: int) -> list[dict[str, Any]]:
    worker.own_confinement()  # as the server does once at start
    figures = [
        _against_peer("worker check, unconfined caller", None, checks, rounds),
        _against_peer("worker check, caller with no_new_privs", _no_new_privs, checks, rounds),
    ]
    means = _per_call_us(confinement.of_self, checks, rounds)
    figures.append(
        {
            "case": "caller: its own confinement, for the socket's name",
            "served": None,
            "median_us": statistics.median(means),
            "range_us": [min(means), max(means)],
        }
    )
    return figures


def report(figures: list[dict[str, Any]], checks: int, rounds: int) -> str:
    rows = [
        [
            f["case"],
            {True: "served", False: "refused", None: "-"}[f["served"]],
            f"{f['median_us']:.1f}",
            f"{f['range_us'][0]:.1f}-{f['range_us'][1]:.1f}",
        ]
        for f in figures
    ]
    head = f"{rounds} rounds of {checks} checks, the mean of each (target: worker < 100 us)\n\n"
    return head + table(["case", "verdict", "us per check (median)", "range us"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = run(args.checks, args.rounds)
    print(report(figures, args.checks, args.rounds))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
