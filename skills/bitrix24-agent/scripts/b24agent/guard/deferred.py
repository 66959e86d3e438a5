"""Work a call may finish after its caller has the answer: moving the audit chain's head.

A call's audit line is on disk (fsynced) before its exit code goes out. The head file that
names the newest line (``auditchain.write_head``) is a second sync, the largest single cost of
a served ``b24`` call (1 to 1.5 ms of about 19), and the chain already accepts a head exactly
one line behind: that is what a writer killed between the two leaves, and the next writer
repairs it. So a worker that serves one call and then exits (the warm server's, the broker's:
``cli/warm/worker.py``) sends the exit code first and moves the head after, still under the
log's lock, which it releases only then; the caller's stdio is let go before, so no reader
waits for it. A failure then (the disk gone) leaves the head one line behind, as a kill would.

Everywhere else (the plain CLI, the library, MCP) nothing is deferred: ``later`` runs the work
at once, so a failing head write is reported by the call as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["deferring", "later", "settle"]

#: The work put off in this process, or None when nothing may be (no ``deferring`` open).
_pending: list[Callable[[], None]] | None = None


def later(work: Callable[[], None]) -> None:
    """Run ``work`` once the answer is out (inside ``deferring``), or now (anywhere else)."""
    if _pending is None:
        work()
    else:
        _pending.append(work)


def settle() -> None:
    """Run the work put off so far, oldest first: before anything that must come after it
    (the next audit line of the same call takes the lock the last one still holds)."""
    while _pending:
        _pending.pop(0)()


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Put ``later`` work off until the block ends, then run it (also when the block raised)."""
    global _pending
    _pending = []
    try:
        yield
    finally:
        try:
            settle()
        finally:
            _pending = None
