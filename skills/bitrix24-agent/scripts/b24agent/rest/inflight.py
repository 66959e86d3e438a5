"""One request sent from a background thread while the caller does something else.

Used where requests are independent (``call_many(parallel=N)``); ``Chain`` runs a sequence of
requests where each one needs the answer of the one before (the id-chained export), sending each
as soon as that answer is in, while the caller is still busy with earlier ones.
A daemon thread rather than an executor: a reader that stops early (``| head``, Ctrl-C) must not
wait for an answer nobody will read, and a generator holding one may be finalised from any
thread, where an executor's shutdown would try to join itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Chain", "InFlight"]

T = TypeVar("T")
S = TypeVar("S")


class InFlight(Generic[T]):
    """Starts ``send()`` at once; ``result()`` waits for it and re-raises its error here."""

    def __init__(self, send: Callable[[], T], name: str = "b24-request") -> None:
        self._send = send
        self._answer: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._answer = self._send()
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._answer  # type: ignore[return-value]


class _End:
    """The producer's last word: done, or the error to raise in the caller's thread."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Chain(Generic[S, T]):
    """Runs ``step(state) -> (item, next state or None)`` again and again in one thread,
    starting with ``first``, and yields the items in order.

    The next step starts the moment the last one returned, not when the caller asks for its
    item: at most ``ahead`` items wait for the caller (plus the one it holds and the one
    being made), which bounds memory when the caller is slower than the requests. A step's
    error is raised in the caller's thread after every item before it.
    """

    def __init__(self, first: S, step: Callable[[S], tuple[T, S | None]], ahead: int = 1) -> None:
        self._step = step
        self._items: queue.Queue[T | _End] = queue.Queue(maxsize=ahead)
        self._thread = threading.Thread(
            target=self._run, args=(first,), name="b24-chain", daemon=True
        )
        self._thread.start()

    def _run(self, state: S) -> None:
        while True:
            try:
                item, following = self._step(state)
            except BaseException as exc:  # handed to the caller's thread by __iter__
                self._items.put(_End(exc))
                return
            self._items.put(item)
            if following is None:
                self._items.put(_End())
                return
            state = following

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._items.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
