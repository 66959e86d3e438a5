"""The local dead-letter queue: events the handler could not finish, kept where nothing erases them.

An event goes here after its last retry (or at once on a permanent failure) and is flagged on the
portal with ``event.offline.error``; only then is its reservation given up. The file is
append-only JSONL, each line fsynced before the portal is told anything:

    {"status": "dead", "delivery_id", "at", "reason", "attempts", "process_id", "event"}
    {"status": "replayed", "delivery_id", "at"}

A ``replayed`` line closes every earlier ``dead`` line with the same delivery id (``--replay-dlq``
handled it); a later ``dead`` line for the same id replaces the earlier one. Nothing is ever
rewritten in place, so a crash cannot lose an entry that was already written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import CorruptStateError
from ..state import JsonlWriter, read_jsonl
from .delivery import Delivery

__all__ = ["DeadLetterQueue"]


class DeadLetterQueue:
    """Append-only DLQ file; opened lazily so a worker that never fails never creates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None

    def _append(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = JsonlWriter(self.path)
        self._writer.append(record)

    def add(self, delivery: Delivery, reason: str) -> None:
        """Durably record ``delivery`` as dead with a (secret-free) ``reason``."""
        self._append(
            {
                "status": "dead",
                "delivery_id": delivery.delivery_id,
                "at": time.time(),
                "reason": reason,
                "attempts": delivery.attempt,
                "process_id": delivery.process_id,
                "event": delivery.event,
            }
        )

    def resolve(self, delivery_id: str) -> None:
        """Close the entry: a replay handled it."""
        self._append({"status": "replayed", "delivery_id": delivery_id, "at": time.time()})

    def open_entries(self) -> dict[str, dict[str, Any]]:
        """delivery id -> latest ``dead`` record, for entries no ``replayed`` line closed.

        A damaged line raises CorruptStateError and the file stays where it is: unlike the
        checkpoint, whose loss costs a scan of the portal, it is the only copy of its dead
        letters."""
        try:
            return self._read_open()
        except CorruptStateError as exc:
            raise exc.with_hint(
                "repair or delete that line (one JSON object per line); the worker never "
                "rewrites this file and keeps its dead letters until replayed"
            ) from None

    def _read_open(self) -> dict[str, dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        for record in read_jsonl(self.path):
            key = str(record.get("delivery_id", ""))
            if record.get("status") == "dead" and isinstance(record.get("event"), dict):
                entries[key] = record
            elif record.get("status") == "replayed":
                entries.pop(key, None)
        return entries

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
