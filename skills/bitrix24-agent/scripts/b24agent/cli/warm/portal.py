"""The portal, reached through the broker: the calls the offline worker makes, run as ``b24``.

With ``B24_BROKER=unix:PATH`` the offline worker holds no credential: each of its portal calls
(``event.offline.get``, ``.clear``, ``.error``, ``.list``) becomes the ``b24`` command a shell
would type, sent over the broker's socket (``brokered.call``) and run there under the broker's
settings, ceiling and keyed audit. The broker lets it drain the queue without a person approving
every call only when its operator named this user in ``B24_BROKER_DRAINERS``
(guard/drain.py); otherwise each call is refused, exit 3. The worker's checkpoint, journal,
sink and dead letters stay on this side: what it handled is not the broker's to know.

The worker's queue uses ``call`` and ``iter_all``; batching the clear with the next ``get``
(``OfflineQueue.turn``) is not offered here, so through the broker each clear is its own call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import error_from_line
from .brokered import call

__all__ = ["BrokeredPortal"]

#: The worker's own acknowledgement of what it sends (a write, a delete): no widening, the
#: broker's ceiling and drain list still decide.
CONFIRMED = ("--confirm-write", "--confirm-destructive")


@dataclass(frozen=True)
class Answer:
    """The part of a call's answer the worker reads."""

    result: Any


class BrokeredPortal:
    """``call`` and ``iter_all`` of a Bitrix24Client, each run as ``b24`` in the broker."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        #: Calls made through the broker (an export of several pages counts once).
        self.requests_sent = 0

    def _run(self, args: list[str], params: Mapping[str, Any] | None) -> str:
        self.requests_sent += 1
        argv = ["b24", *args, "--params", "-", "--compact", *CONFIRMED]
        done = call(self.broker, argv, json.dumps(dict(params or {})).encode())
        if done.exit_code != 0:
            raise error_from_line(done.exit_code, done.stderr.decode(errors="replace"))
        return done.stdout.decode()

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, write: bool | None = None
    ) -> Answer:
        """One call; the broker decides whether it is a write (its catalog), not ``write``."""
        return Answer(json.loads(self._run([method, "--output", "result"], params)))

    def iter_all(self, method: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every row of a list method (the broker pages through it)."""
        text = self._run([method, "--all", "--output", "jsonl"], params)
        return (json.loads(line) for line in text.splitlines() if line.strip())
