"""A deadline for one whole exchange with the portal: from the moment its request leaves to its
answer's last byte.

``B24_READ_TIMEOUT`` bounds each read from the socket, not the answer: a portal or a proxy that
sends a byte every few seconds, of the body or of the status line and headers (http.client also
skips any number of ``100 Continue`` answers), would hold a call (a CLI run, an MCP tool call, a
broker worker) for ever. So an exchange is watched (``within``) from before its request is sent:
the connection it goes over is handed to its watch the moment the socket exists, or the moment a
pooled one is taken for it (``adopt``, called by rest/pools.py's connections). At the deadline
the socket is shut down, which ends a read or write blocked on it in another thread at once, and
the exchange learns from ``Cut.passed`` that whatever it holds may not be whole.

A watch ends when its connection goes back to the pool (``let_go``) or when the exchange ends,
whichever comes first, under the keeper's lock: from then on the deadline cannot touch that
connection, which another thread (a parallel batch) may take at once. A deadline that struck
first leaves the connection shut; ``let_go`` says so and it is closed, never handed out again.

One daemon thread per process keeps every deadline in a heap: watching an exchange costs a
``dup`` of its socket and a heap push, not a thread (a ``threading.Timer`` per call cost
~150 µs on a busy machine, more than a sandbox call's own overhead).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from .interrupts import start_uninterrupted

__all__ = ["Cut", "adopt", "let_go", "within"]

#: The keeper's longest single wait (seconds); it looks at its heap again after that.
MAX_WAIT_S = 3600.0


class Cut:
    """One exchange's deadline, watched from ``within``'s start until the exchange ends or its
    connection goes back to the pool."""

    __slots__ = ("at", "ended", "keeper", "passed", "sock")

    def __init__(self, at: float, keeper: _Keeper) -> None:
        self.at = at
        #: The keeper watching it (a forked child gets a keeper of its own).
        self.keeper = keeper
        #: A duplicate of the exchange's socket once it has one (shutting it down ends the
        #: connection for every descriptor of it); None again once the watch ended.
        self.sock: socket.socket | None = None
        #: Whether the deadline passed while the exchange was watched (its socket, if it had one
        #: by then, was shut down; one adopted later is shut down at once).
        self.passed = False
        self.ended = False


class _Keeper:
    """The deadlines of this process and the thread that cuts the connections past theirs."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._heap: list[tuple[float, int, Cut]] = []
        self._order = itertools.count()
        self._watched = 0
        self._thread: threading.Thread | None = None

    def watch(self, cut: Cut) -> None:
        with self.lock:
            self._watched += 1
            if len(self._heap) > 2 * self._watched + 64:  # ended watches wait for their time
                self._heap = [entry for entry in self._heap if not entry[2].ended]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (cut.at, next(self._order), cut))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="b24-answer-deadline", daemon=True
                )
                start_uninterrupted(self._thread)
            elif self._heap[0][2] is cut:
                self.lock.notify()

    def attach(self, cut: Cut, sock: Any) -> None:
        """Watch ``sock`` (anything with a ``fileno``) for ``cut``, unless it watches one already
        or ended; past its deadline, shut it down at once."""
        with self.lock:
            if cut.ended or cut.sock is not None:
                return
            cut.sock = _duplicate(sock)
            if cut.passed:
                _shut(cut.sock)

    def end(self, cut: Cut) -> bool:
        """Stop watching ``cut`` and close its duplicate; under the lock, so that the thread
        never shuts down a descriptor number that was closed and given to another file, nor a
        connection after it went back to the pool. Whether the deadline struck first."""
        with self.lock:
            if not cut.ended:
                cut.ended = True
                self._watched -= 1
                sock, cut.sock = cut.sock, None
                if sock is not None:
                    sock.close()
            return cut.passed

    def _run(self) -> None:
        with self.lock:
            while True:
                while self._heap and self._heap[0][2].ended:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self.lock.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    # Capped: a wait past threading.TIMEOUT_MAX raises and would end this thread.
                    self.lock.wait(min(left, MAX_WAIT_S))
                    continue
                cut = heapq.heappop(self._heap)[2]
                cut.passed = True
                _shut(cut.sock)


_keeper = _Keeper()
#: The exchange this thread is having (``within``), which a new or pooled connection joins.
_current = threading.local()


def _fresh_keeper() -> None:
    """A forked child (the warm server's and the broker's workers) has no keeper thread, and
    its lock may have been held by another thread at the fork."""
    global _keeper
    _keeper = _Keeper()


os.register_at_fork(after_in_child=_fresh_keeper)


def _duplicate(sock: Any) -> socket.socket | None:
    """A duplicate of the socket behind ``sock`` (a socket, or an urllib3 answer); None when it
    has none (an answer read whole: nothing left to wait for)."""
    try:
        duplicate = os.dup(sock.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    try:
        return socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[Cut]:
    """Watch the exchange this thread has inside the block: its connection is cut ``seconds``
    from now unless the block ended, or the connection went back to the pool, first."""
    cut = Cut(time.monotonic() + seconds, _keeper)
    cut.keeper.watch(cut)
    outer = getattr(_current, "cut", None)
    _current.cut = cut
    try:
        yield cut
    finally:
        _current.cut = outer
        cut.keeper.end(cut)


def adopt(sock: Any) -> Cut | None:
    """Hand ``sock`` (a new connection's socket, a pooled connection's, or an answer whose
    connection nobody handed over: a session without rest/pools.py) to the exchange this thread
    is having; that exchange's Cut, or None outside one. A no-op when it watches a socket
    already."""
    cut: Cut | None = getattr(_current, "cut", None)
    if cut is not None:
        cut.keeper.attach(cut, sock)
    return cut


def let_go(cut: Cut) -> bool:
    """End ``cut``'s watch as its connection goes back to the pool; True when its deadline
    struck first (the connection is shut: close it, never hand it out again)."""
    return cut.keeper.end(cut)
