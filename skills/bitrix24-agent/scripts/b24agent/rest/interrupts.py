"""The signals that interrupt a call, kept off the helper threads a call starts.

Python runs a signal's handler in the main thread, but the kernel hands a signal sent to the
process (Ctrl-C at a terminal, ``kill``) to any thread that does not block it, and the handler
then runs in the main thread whatever that thread blocks. The pipeline holds these signals in
the main thread while it writes an audit line (``guard.pipeline``); that only works if no other
thread can take them meanwhile. So the threads a call starts (the answer deadline's keeper,
requests in flight, an export's chain) start with them blocked, leaving the main thread the only
one to receive them.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["INTERRUPTS", "start_uninterrupted"]

#: Signals that interrupt a call (Ctrl-C, and what the broker's worker takes from its caller).
INTERRUPTS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def start_uninterrupted(thread: threading.Thread) -> None:
    """Start ``thread`` with INTERRUPTS blocked in it (a thread starts with its starter's signal
    mask, which is put back at once)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
