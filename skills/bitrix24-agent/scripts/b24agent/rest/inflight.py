"""One request sent from a background thread while the caller does something else.

Used where requests are independent (``call_many(parallel=N)``); ``Chain`` runs a sequence of
requests where each one needs the answer of the one before (the id-chained export), sending each
as soon as the part of that answer it needs is in, while the caller is still busy with earlier
ones.
A daemon thread rather than an executor: a reader that stops early (``| head``, Ctrl-C) must not
wait for an answer nobody will read, and a generator holding one may be finalised from any
thread, where an executor's shutdown would try to join itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from .interrupts import start_uninterrupted

__all__ = ["Chain", "Hooks", "InFlight"]

T = TypeVar("T")
S = TypeVar("S")


class InFlight(Generic[T]):
    """Starts ``send()`` at once; ``result()`` waits for it and re-raises its error here."""

    def __init__(self, send: Callable[[], T], name: str = "b24-request") -> None:
        self._send = send
        self._answer: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        start_uninterrupted(self._thread)

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


class Hooks(Protocol[S]):
    """What a chain step may tell its chain while it runs (see ``Chain``)."""

    def early(self, guess: S) -> None:
        """The next state is probably ``guess``: start the next step now, if there is room."""

    def sent(self) -> None:
        """This step's request has left (a step started early lets its parent go on then)."""


class _Step(Generic[S, T]):
    """One step running in its own thread, and the successor it may have started early.

    A step started early is on probation until its parent returns: only a step the chain kept
    may start a successor of its own, so a dropped guess never grows a chain of its own."""

    def __init__(self, chain: Chain[S, T], state: S, *, kept: bool = False) -> None:
        self.state = state
        self.successor: _Step[S, T] | None = None
        self._chain = chain
        self._sent = threading.Event()
        self._decided = threading.Event()
        self._kept = kept
        if kept:
            self._decided.set()
        self._run: InFlight[tuple[T, S | None]] | None = InFlight(self._work, name="b24-chain-step")

    def _work(self) -> tuple[T, S | None]:
        try:
            return self._chain.step(self.state, self)
        finally:
            self._sent.set()  # a parent waiting for this request never waits on a failed step

    def decide(self, kept: bool) -> None:
        self._kept = kept
        self._decided.set()

    def early(self, guess: S) -> None:
        self._decided.wait()
        if not self._kept or self.successor is not None or not self._chain.has_room():
            return
        self.successor = _Step(self._chain, guess)
        # Until its request has left: this thread's next work (decoding an answer) holds the
        # GIL for milliseconds, which would hold the new request back.
        self.successor._sent.wait()

    def sent(self) -> None:
        self._sent.set()

    def result(self) -> tuple[T, S | None]:
        """The step's item and next state, once; the step lets go of them, so that a batch is
        freed as soon as the caller is done with it, not at the next garbage collection
        (the step and its thread refer to each other)."""
        run, self._run = self._run, None
        assert run is not None, "a step's result is taken once"
        return run.result()

    def follow(self, following: S | None) -> _Step[S, T] | None:
        """The early successor if it guessed ``following``; a wrong one is dropped."""
        successor = self.successor
        if successor is None:
            return None
        right = following is not None and successor.state == following
        successor.decide(right)
        return successor if right else None


class Chain(Generic[S, T]):
    """Runs ``step(state, hooks) -> (item, next state or None)`` again and again, starting with
    ``first``, and yields the items in order.

    Each step starts the moment the one before it knows the next state: when it returns, or
    earlier, when it calls ``hooks.early(guess)`` (the export reads the next start id from an
    answer's bytes before decoding them). An early step runs beside the rest of its parent;
    if the parent then returns another next state, the early step's item is dropped and the
    right step runs (the early one may have sent its request: only for reads). A step starts
    early only when its parent's item will fit in the queue, so at most ``ahead`` items
    wait for the caller (plus the one it holds and the one being made), which bounds memory
    when the caller is slower than the requests. A step's error is raised in the caller's
    thread after every item before it.
    """

    def __init__(
        self, first: S, step: Callable[[S, Hooks[S]], tuple[T, S | None]], ahead: int = 1
    ) -> None:
        self.step = step
        self._items: queue.Queue[T | _End] = queue.Queue(maxsize=ahead)
        self._thread = threading.Thread(
            target=self._run, args=(first,), name="b24-chain", daemon=True
        )
        start_uninterrupted(self._thread)

    def has_room(self) -> bool:
        """Whether the item being made will fit in the queue (only this chain puts)."""
        return self._items.qsize() < self._items.maxsize

    def _run(self, first: S) -> None:
        current = _Step(self, first, kept=True)
        while True:
            try:
                item, following = current.result()
            except BaseException as exc:  # handed to the caller's thread by __iter__
                current.follow(None)
                self._items.put(_End(exc))
                return
            successor = current.follow(following)
            self._items.put(item)
            if following is None:
                self._items.put(_End())
                return
            current = successor or _Step(self, following, kept=True)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._items.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
