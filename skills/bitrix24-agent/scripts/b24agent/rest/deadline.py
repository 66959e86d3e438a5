"""A deadline for reading one whole answer.

``B24_READ_TIMEOUT`` bounds each read from the socket, not the answer: a portal or a proxy that
sends a byte every few seconds would hold a call (a CLI run, an MCP tool call, a broker worker)
for ever. So the answer's connection is cut at its deadline: its socket is shut down, which
ends a read blocked on it in another thread at once, and the reader learns from ``Cut.passed``
that the answer it holds, whatever it looks like, is not whole.

One daemon thread per process keeps every deadline in a heap: watching an answer costs a
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

__all__ = ["Cut", "cut_at"]

#: The keeper's longest single wait (seconds); it looks at its heap again after that.
MAX_WAIT_S = 3600.0


class Cut:
    """One answer's deadline, watched from ``cut_at``'s start to its end."""

    __slots__ = ("at", "passed", "sock")

    def __init__(self, sock: socket.socket, at: float) -> None:
        #: A duplicate of the answer's socket (shutting it down ends the connection for every
        #: descriptor of it), or None once the watch ended.
        self.sock: socket.socket | None = sock
        self.at = at
        #: Whether the deadline passed and the connection was cut.
        self.passed = False


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
                self._heap = [entry for entry in self._heap if entry[2].sock is not None]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (cut.at, next(self._order), cut))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="b24-answer-deadline", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is cut:
                self.lock.notify()

    def end(self, cut: Cut) -> None:
        """Stop watching ``cut`` and close its duplicate; under the lock, so that the thread
        never shuts down a descriptor number that was closed and given to another file."""
        with self.lock:
            sock, cut.sock = cut.sock, None
            if sock is not None:
                self._watched -= 1
                sock.close()

    def _run(self) -> None:
        with self.lock:
            while True:
                while self._heap and self._heap[0][2].sock is None:
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
                with contextlib.suppress(OSError):
                    cut.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]


_keeper = _Keeper()


def _fresh_keeper() -> None:
    """A forked child (the warm server's and the broker's workers) has no keeper thread, and
    its lock may have been held by another thread at the fork."""
    global _keeper
    _keeper = _Keeper()


os.register_at_fork(after_in_child=_fresh_keeper)


def _socket_of(raw: Any) -> socket.socket | None:
    """A duplicate of the socket an urllib3 answer is read from; None once it is read whole
    (its file is closed: nothing left to wait for)."""
    try:
        duplicate = os.dup(raw.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    try:
        return socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None


@contextlib.contextmanager
def cut_at(raw: Any, at: float) -> Iterator[Cut | None]:
    """Cut the connection of ``raw`` (a ``requests`` answer's ``raw``) at ``at``
    (``time.monotonic()``) unless the block ended first; yields the Cut, or None when there is
    no socket left to read from."""
    sock = _socket_of(raw)
    if sock is None:
        yield None
        return
    cut = Cut(sock, at)
    keeper = _keeper
    keeper.watch(cut)
    try:
        yield cut
    finally:
        keeper.end(cut)
