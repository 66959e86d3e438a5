"""One request sent from a background thread while the caller does something else.

Used where the next request is known before the caller has finished with the last answer (the
next id-chained export batch) or where requests are independent (``call_many(parallel=N)``).
A daemon thread rather than an executor: a reader that stops early (``| head``, Ctrl-C) must not
wait for an answer nobody will read, and a generator holding one may be finalised from any
thread, where an executor's shutdown would try to join itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["InFlight"]

T = TypeVar("T")


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
