"""Adopting reservations a crash left without a checkpoint.

A worker that dies between ``event.offline.get`` (clear=0) and writing its checkpoint leaves rows
reserved under a process id nobody remembers; the portal hands them to no other caller and purges
them after 30 days. ``event.offline.list`` shows every row with its ``PROCESS_ID``, so on start
(and after a ``get`` whose answer was lost) the worker takes over every reserved row whose process
id its checkpoint does not know and can claim. On one host (file backend) every such id is
claimable: the worker lock makes this the only worker. On a fleet (Redis backend) a reservation
is claimable only when nobody owns it or its owner's lease expired, so live workers on other
hosts keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.base import WorkerLeases
from .authenticity import rejected_ids
from .checkpoint import Checkpoint
from .queue import OfflineQueue

__all__ = ["Adopted", "adopt_orphans"]


@dataclass(frozen=True)
class Adopted:
    reservations: int
    rows: int
    rejected: int


def adopt_orphans(
    queue: OfflineQueue,
    checkpoint: Checkpoint,
    application_token: str | None,
    leases: WorkerLeases,
    *,
    scanned: list[dict[str, Any]] | None = None,
) -> Adopted:
    """Checkpoint every orphaned reservation found on the portal that this worker can claim;
    the caller then works them. ``scanned``: the whole scan, when it came with the first
    ``get`` (``OfflineQueue.opening``)."""
    known = checkpoint.known_process_ids()
    groups = {
        pid: group
        for pid, group in queue.reserved_elsewhere(known, scanned).items()
        if leases.claim(pid)
    }
    rows = rejected = 0
    for process_id, group in groups.items():
        refused = rejected_ids(application_token, group)
        checkpoint.add(process_id, group, _source(group), rejected=refused)
        rows += len(group)
        rejected += len(refused)
    checkpoint.forget_orphans()
    return Adopted(len(groups), rows, rejected)


def _source(rows: list[dict[str, Any]]) -> str:
    """How to work an adopted reservation. Rows flagged ``ERROR`` (event-offline-list.md) were
    reserved by a ``--replay-dlq`` that died (``get`` with ``error=1``): they are dead letters
    and are replayed as such, their DLQ entries closed; worked as fresh events, their entries
    would stay open and the next replay would hand them over a second time."""
    if rows and all(str(row.get("ERROR", "0")) == "1" for row in rows):
        return "errors"
    return "adopted"
