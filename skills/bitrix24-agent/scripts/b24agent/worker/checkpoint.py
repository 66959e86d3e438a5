"""The worker's memory across crashes: which reservations it holds and what became of each event.

Rows reserved with ``clear=0`` come back only to a call that passes their ``process_id``, so the
id and the rows are written here, atomically, before the first event is handed to a handler. Two
files make that cheap enough to do for every event:

- the snapshot (``checkpoint.json``, through ``b24agent.state``): open reservations with their
  rows and every outcome known when it was written, plus quarantined reservations;
- the journal (``checkpoint.json.journal``, JSONL): one line per outcome since the snapshot,
  ``{"pid", "id", "outcome"}``, written as each event finishes and fsynced before the portal
  is told anything (see ``record`` for why that order is enough).

Loading replays the journal over the snapshot. Every snapshot write folds the journal in and then
empties it, so a crash between the two only leaves lines that repeat what the snapshot says.
Journal lines for a process id the snapshot does not know (the snapshot was lost or moved aside
as corrupt) are kept aside and applied if that reservation is adopted back from the portal, so a
lost snapshot costs a scan of the queue, not a second delivery of everything already handled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptStateError
from ..state import JsonlWriter, move_aside, read_json, read_jsonl, write_json_atomic
from .delivery import event_id, public_row

__all__ = ["OUTCOMES", "Checkpoint", "Reservation"]

#: done: the handler finished it; dead: it went to the DLQ; rejected: it failed the
#: application_token check and must be neither handled nor cleared.
OUTCOMES = ("done", "dead", "rejected")
SOURCES = ("queue", "adopted", "errors")

_ROW = {"type": "object", "required": ["ID"]}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "reservations", "quarantine"],
    "properties": {
        "version": {"const": 1},
        "reservations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["process_id", "source", "reserved_at", "events"],
                "properties": {
                    "process_id": {"type": "string", "minLength": 1},
                    "source": {"enum": list(SOURCES)},
                    "reserved_at": {"type": "number"},
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["row"],
                            "properties": {
                                "row": _ROW,
                                "outcome": {"enum": [None, *OUTCOMES]},
                            },
                        },
                    },
                },
            },
        },
        "quarantine": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["process_id", "ids", "reason"],
                "properties": {
                    "process_id": {"type": "string"},
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}


@dataclass
class Reservation:
    """Rows held under one ``process_id``, in the order the portal gave them, with outcomes."""

    process_id: str
    source: str
    reserved_at: float
    rows: dict[str, dict[str, Any]]
    outcomes: dict[str, str] = field(default_factory=dict)

    def pending(self) -> list[dict[str, Any]]:
        """Rows without an outcome yet: the ones still to hand to the handler."""
        return [row for key, row in self.rows.items() if key not in self.outcomes]

    def ids_with(self, outcome: str) -> list[str]:
        return [key for key in self.rows if self.outcomes.get(key) == outcome]

    def to_json(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "source": self.source,
            "reserved_at": self.reserved_at,
            "events": [
                {"row": row, "outcome": self.outcomes.get(key)} for key, row in self.rows.items()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservation:
        rows: dict[str, dict[str, Any]] = {}
        outcomes: dict[str, str] = {}
        for item in data["events"]:
            key = event_id(item["row"])
            rows[key] = item["row"]
            if item.get("outcome"):
                outcomes[key] = item["outcome"]
        return cls(data["process_id"], data["source"], data["reserved_at"], rows, outcomes)


class Checkpoint:
    """Snapshot + journal for one worker. Only the process holding the worker lock opens it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_path = path.with_name(path.name + ".journal")
        self.reservations: dict[str, Reservation] = {}
        self.quarantine: list[dict[str, Any]] = []
        self._orphans: dict[str, dict[str, str]] = {}
        self._journal: JsonlWriter | None = None

    # --- loading ---------------------------------------------------------------------------

    def open(self) -> Checkpoint:
        """Read snapshot and journal; CorruptStateError (file moved aside) if they are damaged."""
        data = read_json(
            self.path, default={"version": 1, "reservations": [], "quarantine": []}, schema=SCHEMA
        )
        self.reservations = {
            item["process_id"]: Reservation.from_json(item) for item in data["reservations"]
        }
        self.quarantine = list(data["quarantine"])
        try:
            self._replay_journal()
        except CorruptStateError as exc:
            # Like a corrupt snapshot: moved aside and reported; the next start redelivers
            # what it recorded (repeats, never losses) instead of failing forever.
            raise CorruptStateError(exc.path, move_aside(exc.path), exc.reason, at=exc.at) from None
        self._journal = JsonlWriter(self.journal_path)
        return self

    def _replay_journal(self) -> None:
        for number, record in enumerate(read_jsonl(self.journal_path), start=1):
            pid, key, outcome = record.get("pid"), record.get("id"), record.get("outcome")
            if not (isinstance(pid, str) and isinstance(key, str) and outcome in OUTCOMES):
                raise CorruptStateError(
                    self.journal_path, None, "not a worker journal record", at=f"line {number}"
                )
            reservation = self.reservations.get(pid)
            target = reservation.outcomes if reservation else self._orphans.setdefault(pid, {})
            target[key] = outcome

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # --- queries ---------------------------------------------------------------------------

    def known_process_ids(self) -> set[str]:
        """Process ids this worker owns: open reservations and quarantined ones."""
        return set(self.reservations) | {item["process_id"] for item in self.quarantine}

    def forget_orphans(self) -> None:
        """Drop journal outcomes of reservations that were not adopted back (gone from portal)."""
        if self._orphans:
            self._orphans.clear()
            self._save()

    # --- changes ---------------------------------------------------------------------------

    def add(
        self,
        process_id: str,
        rows: Iterable[Mapping[str, Any]],
        source: str,
        *,
        rejected: Iterable[str] = (),
        settled: tuple[Reservation, Iterable[str]] | None = None,
    ) -> Reservation:
        """Record a reservation (or new rows of a known one) on disk, before anything is handled.

        Rows are stored without credential-bearing keys, so the application_token verdict is
        taken before and passed as ``rejected`` (ids that failed it), saved in the same write.
        Outcomes journaled for this process id before a lost snapshot are applied, so those
        events are not handed over again. ``settled`` is (reservation, ids) the portal just
        confirmed cleared in the same request: forgotten in the same write.
        """
        if settled is not None:
            self._forget(*settled)
        reservation = self.reservations.get(process_id)
        if reservation is None:
            reservation = Reservation(
                process_id, source, time.time(), {}, self._orphans.pop(process_id, {})
            )
            self.reservations[process_id] = reservation
        for row in rows:
            reservation.rows.setdefault(event_id(row), _stored_row(row))
        for key in rejected:
            reservation.outcomes.setdefault(key, "rejected")
        self._save()
        return reservation

    def record(self, reservation: Reservation, key: str, outcome: str) -> None:
        """Note one event's outcome (see ``record_all``)."""
        self.record_all(reservation, [key], outcome)

    def record_all(self, reservation: Reservation, keys: list[str], outcome: str) -> None:
        """Note events' outcomes: a journal line each, in one write, not fsynced.

        The lines are written only after the handler's work is durable (a buffered handler's
        ``flush`` returned) or the DLQ line was fsynced, so they state facts already on disk.
        If a power cut loses them, the events are delivered again: a repeat, never a loss.
        Portal changes wait for ``sync``.
        """
        assert self._journal is not None, "checkpoint not open"
        if not keys:
            return
        pid = reservation.process_id
        for key in keys:
            reservation.outcomes[key] = outcome
        lines = (
            json.dumps({"pid": pid, "id": key, "outcome": outcome}, separators=(",", ":"))
            for key in keys
        )
        self._journal.append_text("\n".join(lines), sync=False)

    def sync(self) -> None:
        """fsync the journal: called before the portal is told to clear or flag rows."""
        if self._journal is not None:
            self._journal.sync()

    def settle(
        self,
        reservation: Reservation,
        finished: Iterable[str],
        *,
        quarantined: Iterable[str] = (),
        reason: str = "",
    ) -> None:
        """Forget events the portal no longer holds for us (cleared or flagged), and move
        ``quarantined`` ids (left reserved on purpose) to the quarantine list."""
        self._forget(reservation, finished)
        kept = [key for key in quarantined if reservation.rows.pop(key, None) is not None]
        if kept:
            self.quarantine.append(
                {
                    "process_id": reservation.process_id,
                    "ids": kept,
                    "reason": reason,
                    "at": time.time(),
                }
            )
        if not reservation.rows:
            self.reservations.pop(reservation.process_id, None)
        self._save()

    def _forget(self, reservation: Reservation, finished: Iterable[str]) -> None:
        for key in finished:
            reservation.rows.pop(key, None)
            reservation.outcomes.pop(key, None)
        if not reservation.rows:
            self.reservations.pop(reservation.process_id, None)

    def drop(self, reservation: Reservation) -> None:
        """Forget a reservation another worker owns now (it adopted it after our lease lapsed)."""
        if self.reservations.pop(reservation.process_id, None) is not None:
            self._save()

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "version": 1,
                "reservations": [r.to_json() for r in self.reservations.values()],
                "quarantine": self.quarantine,
            },
        )
        if self._journal is not None and not self._orphans:
            self._journal.truncate()


def _stored_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as kept in the checkpoint: list-only columns and credentials dropped."""
    return {k: v for k, v in public_row(row).items() if k not in ("PROCESS_ID", "ERROR")}
