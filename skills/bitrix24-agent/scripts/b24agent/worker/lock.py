"""One worker per portal and state folder, for the life of the process.

Two workers sharing a checkpoint would overwrite each other's reservations, and each would take
the other's live reservation for a crashed one and adopt it. The lock is a ``filelock`` (flock)
file next to the worker's state: the kernel drops it when the process dies, even by SIGKILL, so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from ..errors import ConflictError
from ..state import file_lock

__all__ = ["worker_lock"]


@contextmanager
def worker_lock(folder: Path) -> Iterator[Path]:
    """Hold ``folder/worker.lock`` or raise ConflictError (exit 5) at once if another holds it."""
    lock = file_lock(folder / "worker", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConflictError(
            f"another offline worker is already running for this portal (lock {lock.lock_file})",
            code="WORKER_RUNNING",
            hint="stop the other worker first; to run one per host against the same portal, give "
            "each its own B24_STATE_DIR and turn adoption of other workers' reservations off",
        ) from None
    try:
        yield Path(lock.lock_file)
    finally:
        lock.release()
