"""The signals that interrupt a call: how they interrupt it, and kept off its helper threads.

Python runs a signal's handler in the main thread, but the kernel hands a signal sent to the
process (Ctrl-C at a terminal, ``kill``) to any thread that does not block it, and the handler
then runs in the main thread whatever that thread blocks. The pipeline holds these signals in
the main thread while it writes an audit line (``guard.pipeline``); that only works if no other
thread can take them meanwhile. So the threads a call starts (the answer deadline's keeper,
requests in flight, an export's chain) start with them blocked, leaving the main thread the only
one to receive them.

SIGTERM and SIGHUP (a process manager's stop, a closed terminal) interrupt a call as Ctrl-C
does, instead of ending the process on the spot: a process ended after a write left would leave
no audit line for a write the portal ran. They are reported with the exit code a shell gives a
process that signal ended (128 + its number: 143, 129), so a supervisor tells its own stop from
a user's Ctrl-C (130).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "INTERRUPTS",
    "Terminated",
    "interruption",
    "interruption_exit_code",
    "start_uninterrupted",
    "terminations_interrupt",
]

#: Signals that interrupt a call (Ctrl-C, and what the broker's worker takes from its caller).
INTERRUPTS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
#: The interrupting signals whose default action would end the process at once.
TERMINATIONS = (signal.SIGTERM, signal.SIGHUP)
EXIT_INTERRUPTED = 130


class Terminated(KeyboardInterrupt):
    """A call interrupted by SIGTERM or SIGHUP: handled wherever Ctrl-C is, exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interruption(signum: int) -> KeyboardInterrupt:
    """What signal ``signum`` raises in the call: Ctrl-C's KeyboardInterrupt, or Terminated."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def interruption_exit_code(exc: BaseException) -> int:
    """The exit code of an interruption: 130 for Ctrl-C, 128 + the signal's number otherwise."""
    return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _terminated_once(signum: int, _frame: object) -> None:
    """The first SIGTERM or SIGHUP interrupts the call; later ones are ignored, so a burst (a
    manager that repeats its stop) cannot break into the audit line the first one writes."""
    for sig in TERMINATIONS:
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


@contextmanager
def terminations_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP interrupt it as Ctrl-C does (``Terminated``).

    Only where they would otherwise end the process: a signal ignored (``nohup``) stays
    ignored, and one with a handler of its own (the broker's worker) keeps it. Only the main
    thread may set handlers; elsewhere (a library caller's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in TERMINATIONS}
    taken = [sig for sig, handler in previous.items() if handler == signal.SIG_DFL]
    for sig in taken:
        signal.signal(sig, _terminated_once)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, previous[sig])


def start_uninterrupted(thread: threading.Thread) -> None:
    """Start ``thread`` with INTERRUPTS blocked in it (a thread starts with its starter's signal
    mask, which is put back at once)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
