"""A batch file of writes, run at most once, settled line by line after an interruption.

The whole file runs under one idempotency key (idempotency.py): a finished run is replayed, not
sent again. What a key's record alone cannot say is how far an interrupted run got, so a journal
next to the record (``<record>.lines.jsonl``) notes each line as it is handed to the client (from
then on it may have been sent) and again with its outcome. The notes are fsynced once per batch
request, before it leaves, so "never handed over" stays true after a power cut too. A run that
was killed, stopped by an error, or left lines with an unknown outcome (a chunk that timed out)
leaves the record outcome-unknown with its journal, and the rerun of the same file settles each
line as a single write would be settled:

- a line with a recorded outcome keeps it and is not sent again (a "not run" failure, exit 6,
  is the exception: it provably did not happen, so it goes again);
- a line never handed over is sent now;
- a line handed over without a known outcome is looked up when it is a CRM create: every such
  line carries its own ORIGIN_ID (``<external id>.<line>``), found means it ran, not found means
  it did not, and it is sent now. Any other write cannot be looked up: the rerun names those
  lines and waits for ``resolve`` (``done``: they ran; ``failed``: send them again).

A line handed over less than a request timeout ago may still be running on the portal (a killed
client does not stop its request there), so its look-up could miss a record about to appear:
the rerun is refused until then (BATCH_LINES_IN_FLIGHT, exit 5, retryable), nothing sent.

So a file killed at any point and rerun ends with each line done exactly once, when its lines
are CRM creates; for other writes, at most the lines in flight at the kill need a decision.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import B24Error, ConflictError, OutcomeUnknownError, TransientError
from ..fingerprint import digest
from ..state import JsonlWriter, read_jsonl
from .batchrecord import dump_outcomes, load_outcomes
from .idempotency import IdempotencyStore, Ticket, request_fingerprint, since
from .reconcile import origin_link
from .safewrite import Resolve

__all__ = ["BATCH_FILE", "BatchRun", "LineCall", "run_batch"]

#: How a batch file is named in audit lines and idempotency fingerprints.
BATCH_FILE = "batch-file"
#: ORIGIN_ID holds at most 255 characters (crm-lead-add.md).
_ORIGIN_MAX = 255

Outcome = tuple[Any, B24Error | None]
#: ``read_many(calls)``: the results of many reads, in order, 50 to a request.
ReadMany = Callable[[Sequence[tuple[str, Mapping[str, Any]]]], list[Any]]
#: ``send(calls, noted)`` sends ``(method, params)`` pairs, pulled lazily, and yields
#: ``(index, result, error)`` for each, ``index`` counting the pairs pulled; it calls
#: ``noted()`` before each request leaves, once the pairs it carries were pulled.
Sender = Callable[
    [Iterable[tuple[str, Mapping[str, Any]]], Callable[[], None]],
    Iterator[tuple[int, Any, Any]],
]


@dataclass(frozen=True)
class LineCall:
    """One line of the file: its number (for ORIGIN_ID and messages), method and params."""

    line: int
    method: str
    params: Mapping[str, Any]


@dataclass
class BatchRun:
    """Each line's outcome by position; ``stopped`` is raised after they are printed."""

    outcomes: dict[int, Outcome]
    how: Literal["sent", "replayed", "recovered"]
    notes: list[str] = field(default_factory=list)
    stopped: B24Error | None = None


def batch_params(calls: Sequence[LineCall]) -> dict[str, Any]:
    """What identifies the file for its key: every line's method and params, in order."""
    return {"calls": [{"method": c.method, "params": dict(c.params)} for c in calls]}


def line_origin(external_id: str, line: int) -> str:
    """The ORIGIN_ID of one line's create: the key's external id and the line number."""
    suffix = f".{line}"
    if len(external_id) + len(suffix) > _ORIGIN_MAX:
        external_id = "b24a-" + digest(external_id)[:40]
    return external_id + suffix


class _Journal:
    """The per-line notes of one run (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None

    def read(self) -> tuple[dict[int, float], dict[int, Outcome]]:
        """(when each position was handed over, outcomes by position) of the runs so far."""
        handed: dict[int, float] = {}
        known: dict[int, Outcome] = {}
        for entry in read_jsonl(self.path):
            if "h" in entry:
                handed[int(entry["h"])] = float(entry.get("t", 0.0))
            elif "p" in entry:
                _, result, error = load_outcomes({"calls": [entry["o"]]})[0]
                known[int(entry["p"])] = (result, error)
        return handed, known

    def note(self, entry: dict[str, Any]) -> None:
        """Note a line, not fsynced: a kill keeps it (page cache), a power cut may not."""
        if self._writer is None:
            self._writer = JsonlWriter(self.path)
        self._writer.append(entry, sync=False)

    def sync(self) -> None:
        """Make the notes so far durable: called once per request, before it leaves, so the
        hand-over notes of every line sent survive a power cut (a line with no note is sent
        again without a look-up). Outcome notes may still be lost then; a line handed over
        without one is "unknown", which is settled, never silently repeated."""
        if self._writer is not None:
            self._writer.sync()

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.sync()
            finally:
                self._writer.close()
                self._writer = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass
class _Run:
    """One run of the file under a ticket: settle what an earlier run left, send the rest."""

    calls: Sequence[LineCall]
    ticket: Ticket
    journal: _Journal
    api: str
    read_many: ReadMany
    in_flight_s: float
    outcomes: dict[int, Outcome] = field(default_factory=dict, init=False)
    handed: bool = field(default=False, init=False)

    def wire(self, position: int) -> tuple[Mapping[str, Any], str | None]:
        """The line's params as sent (a CRM create stamped with its own ORIGIN_ID), and the
        ORIGIN_ID to look it up by (None: not a CRM create)."""
        call = self.calls[position]
        link = origin_link(call.method) if self.api == "v2" else None
        if link is None:
            return call.params, None
        return link.stamp(call.params, line_origin(self.ticket.external_id, call.line))

    def settle(self, resolve: Resolve | None) -> list[int]:
        """Take over an earlier run's outcomes; return the positions to send now."""
        handed, known = self.journal.read()
        unknown: list[int] = []
        for position in range(len(self.calls)):
            outcome = known.get(position)
            if outcome is not None and not isinstance(
                outcome[1], (OutcomeUnknownError, TransientError)
            ):
                self.outcomes[position] = outcome
            elif outcome is not None and isinstance(outcome[1], TransientError):
                continue  # did not run: send again
            elif position in handed or outcome is not None:
                unknown.append(position)
        unanswered = [p for p in unknown if p not in known]  # no answer came back at all
        if unanswered:
            self.check_settled(max(handed.get(p, 0.0) for p in unanswered), unanswered)
        self.look_up([p for p in unknown if self.wire(p)[1] is not None])
        unresolved = []
        for position in unknown:
            if self.wire(position)[1] is not None:
                continue  # a create: found above, or not found and sent below
            if resolve == "done":
                self.outcomes[position] = (None, None)
            elif resolve is None:
                unresolved.append(position)
            # resolve == "failed": it did not run, so it is sent again below
        if unresolved:
            raise _unresolved(self.ticket, [self.calls[p] for p in unresolved])
        return [p for p in range(len(self.calls)) if p not in self.outcomes]

    def check_settled(self, handed_at: float, unknown: list[int]) -> None:
        """Refuse to judge lines a killed run handed over less than ``in_flight_s`` ago: the
        portal may still be running their request, so a look-up would miss a record that is
        about to exist, and sending the line again would double it."""
        wait = handed_at + self.in_flight_s - time.time()
        if wait <= 0:
            return
        lines = sorted(self.calls[p].line for p in unknown)
        raise ConflictError(
            f"an earlier run of this batch file handed lines {_spans(lines)} to the portal "
            f"{self.in_flight_s - wait:.0f} s ago and stopped; their requests may still be "
            "running there",
            code="BATCH_LINES_IN_FLIGHT",
            hint=f"repeat the same run in {math.ceil(wait)} s (requests are given "
            f"{self.in_flight_s:g} s, B24_READ_TIMEOUT); nothing was sent now",
            retryable=True,
        )

    def look_up(self, positions: list[int]) -> None:
        """Find the creates of ``positions`` by their ORIGIN_ID, in batched reads: each found
        one is done (with the answer its create would have given); the others did not run."""
        asks = []
        for position in positions:
            call = self.calls[position]
            link = origin_link(call.method)
            _, origin = self.wire(position)
            assert link is not None and origin is not None
            asks.append((position, link, link.query(call.params, origin)))
        results = self.read_many([query for _, _, query in asks])
        for (position, link, _), result in zip(asks, results, strict=True):
            found = link.answer(result)
            if found is not None:
                self.outcomes[position] = (found.get("result"), None)

    def send(self, positions: list[int], sender: Sender) -> None:
        """Send ``positions`` in order, noting each line as it is handed over and done."""

        def pulled() -> Iterator[tuple[str, Mapping[str, Any]]]:
            for position in positions:
                params, _ = self.wire(position)
                self.journal.note({"h": position, "t": round(time.time(), 3)})
                yield self.calls[position].method, params

        def noted() -> None:
            """A request is about to leave: its lines' notes go to disk first."""
            self.journal.sync()
            self.handed = True

        for index, result, error in sender(pulled(), noted):
            position = positions[index]
            self.outcomes[position] = (result, error)
            self.journal.note({"p": position, "o": _dumped(self.calls[position], result, error)})


def _dumped(call: LineCall, result: Any, error: B24Error | None) -> dict[str, Any]:
    return dump_outcomes([_Item(call, result, error)])["calls"][0]


@dataclass(frozen=True)
class _Item:
    """A line and its outcome, in the shape ``dump_outcomes`` reads."""

    call: LineCall
    result: Any
    error: B24Error | None


def run_batch(
    store: IdempotencyStore,
    *,
    key: str,
    auto: bool,
    api: str,
    calls: Sequence[LineCall],
    send: Sender,
    read_many: ReadMany,
    mask: Callable[[Any], Any],
    in_flight_s: float,
    resolve: Resolve | None = None,
) -> BatchRun:
    """Run the file's ``calls`` at most once under ``key`` (see the module docstring).
    ``in_flight_s``: how long a request handed to the portal may still be running there."""
    ticket = store.begin(
        key,
        fingerprint=request_fingerprint(BATCH_FILE, api, batch_params(calls)),
        method=BATCH_FILE,
        auto=auto,
        recoverable=True,
    )
    if ticket.status == "replay":
        stored = {i: (result, error) for i, result, error in load_outcomes(ticket.response or {})}
        return BatchRun(stored, "replayed", [_replay_note(ticket)])
    journal = _Journal(store.journal_path(key))
    if ticket.status == "fresh":
        journal.remove()  # from a run whose record has since expired
    run = _Run(calls, ticket, journal, api, read_many, in_flight_s)
    stopped: B24Error | None = None
    try:
        recovering = ticket.status == "recover"
        positions = run.settle(resolve) if recovering else list(range(len(calls)))
        try:
            run.send(positions, send)
        except B24Error as exc:
            if not run.handed and ticket.status == "fresh":
                raise
            stopped = _stopped(len(run.outcomes), len(calls), exc)
    except BaseException:
        with contextlib.suppress(OSError):  # the record below must be marked all the same
            journal.close()
        if run.handed or ticket.status == "recover":
            store.mark_unknown(ticket)
        else:
            store.release(ticket)
        raise
    journal.close()
    unknown = any(isinstance(error, OutcomeUnknownError) for _, error in run.outcomes.values())
    if stopped is not None or unknown or len(run.outcomes) < len(calls):
        store.mark_unknown(ticket)
        return BatchRun(run.outcomes, "sent", [], stopped)
    ordered = [_Item(call, *run.outcomes[i]) for i, call in enumerate(calls)]
    store.complete(ticket, mask(dump_outcomes(ordered)))
    journal.remove()
    store.sweep()
    how: Literal["sent", "recovered"] = "recovered" if ticket.status == "recover" else "sent"
    notes = [_recovered_note(key)] if how == "recovered" else []
    return BatchRun(run.outcomes, how, notes)


def _replay_note(ticket: Ticket) -> str:
    record = ticket.record
    again = (
        "; to really run it again, send it without idempotency"
        if record.get("auto")
        else "; use a new key for a new run"
    )
    return (
        f"replayed the stored outcomes of idempotency key {ticket.key!r} (first run "
        f"{since(record['created_at'])}); nothing was sent again{again}"
    )


def _recovered_note(key: str) -> str:
    return (
        f"finished the interrupted run of idempotency key {key!r}: lines that had run were not "
        "sent again (CRM creates found by their ORIGIN_ID), the rest were sent now"
    )


def _stopped(done: int, total: int, cause: B24Error) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"the batch file stopped after {done} of {total} calls: {cause.message}",
        code="BATCH_FILE_UNKNOWN",
        hint="run the same file again with the same key: lines that ran are not sent again, "
        "CRM creates are looked up by their ORIGIN_ID; other lines in flight must be resolved",
    )


def _spans(lines: list[int]) -> str:
    """``3, 7-9, 12`` from sorted line numbers."""
    spans: list[list[int]] = []
    for line in lines:
        if spans and line == spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _unresolved(ticket: Ticket, calls: list[LineCall]) -> OutcomeUnknownError:
    methods = ", ".join(sorted({c.method for c in calls}))
    numbers = sorted(c.line for c in calls)
    return OutcomeUnknownError(
        f"an earlier run of this batch file (idempotency key {ticket.key!r}) stopped with "
        f"{'line' if len(numbers) == 1 else 'lines'} {_spans(numbers)} ({methods}) in flight: "
        "they may or may not have run; the other lines are settled",
        code="BATCH_LINES_UNRESOLVED",
        hint="check those lines on the portal, then run the same file again resolving them as "
        "done (they ran) or failed (send them again)",
        details={"lines": sorted(c.line for c in calls)},
    )
