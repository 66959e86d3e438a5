"""What a handler receives for one offline event, and the stable id that lets it drop repeats.

Delivery is at least once: a crash after the handler finished but before the checkpoint recorded
it hands the same event over again. The ``delivery_id`` is the same every time the same queue row
is delivered (portal + row ID + MESSAGE_ID), so a handler that remembers the ids it has applied
turns that into exactly-once for its own side effects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Delivery", "delivery_id", "event_id", "public_row"]

#: Keys that may hold credentials in an event payload (online-style ``auth`` block); they are
#: checked where they exist and never handed on, written to the sink, the DLQ or the checkpoint.
PRIVATE_KEYS = frozenset({"auth"})


def event_id(row: Mapping[str, Any]) -> str:
    """The queue row's ``ID`` as text (the portal sends strings; a sandbox may send ints)."""
    return str(row.get("ID", ""))


def delivery_id(portal: str, row: Mapping[str, Any]) -> str:
    """A 32-hex id fixed for one queue row on one portal, whatever the attempt or process."""
    text = "\x1f".join((portal, event_id(row), str(row.get("MESSAGE_ID", ""))))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def public_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without credential-bearing keys: what handlers, sink and DLQ may see."""
    return {key: value for key, value in row.items() if key.lower() not in PRIVATE_KEYS}


@dataclass(frozen=True)
class Delivery:
    """One attempt to hand one event to the handler.

    ``source`` is ``queue`` for rows reserved from the live queue (including resumed and adopted
    reservations) and ``replay`` for events fed back from the DLQ or the portal's error rows.
    """

    delivery_id: str
    portal: str
    event: dict[str, Any]
    process_id: str | None
    attempt: int
    source: str = "queue"

    def to_json(self) -> dict[str, Any]:
        """The JSON object a command handler reads on stdin and a sink line holds."""
        return {
            "delivery_id": self.delivery_id,
            "portal": self.portal,
            "event_name": self.event.get("EVENT_NAME"),
            "attempt": self.attempt,
            "source": self.source,
            "process_id": self.process_id,
            "event": self.event,
        }
