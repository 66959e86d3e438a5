"""Start N real processes at the same instant and collect what each one reports.

Races on files (idempotency records, plan claims) are only convincing across processes: the
``spawn`` start method gives each one a fresh interpreter, and a barrier releases them together.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def race(count: int, target: Callable[..., None], *args: Any) -> list[Any]:
    """Run ``target(barrier, results, *args)`` in ``count`` processes; their ``results.put``s,
    sorted. ``target`` must be importable (a module-level function)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, results, *args)) for _ in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, f"racer exited with {proc.exitcode}"
    return sorted(results.get(timeout=5) for _ in procs)
