"""The reserve -> checkpoint -> handle -> clear cycle, and the replay of dead letters.

Order is what makes it lossless:

1. ``event.offline.get`` with ``clear=0`` reserves rows under a new process id;
2. the id and the rows go to the checkpoint (fsynced) before any handler runs;
3. each event is handed to the handler, retried with back-off, and its outcome (done, or dead
   after the DLQ line is fsynced) is journaled: at once for handlers that finish an event when
   they return, and for a buffered handler (the sink) once per reservation, right after its
   ``flush`` (one fsync for the whole group) returned;
4. only then (journal fsynced) are the done rows cleared on the portal (by id) and the dead ones
   flagged with ``event.offline.error``; the checkpoint forgets them after the portal confirmed.
   In the queue loop the clear travels in one batch with the ``get`` of the next reservation
   (``OfflineQueue.turn``), and the checkpoint forgets the old rows and saves the new ones in
   one write.

A crash at any point leaves either a reservation the checkpoint knows (resumed from its saved
rows) or one it does not (adopted through ``event.offline.list``). What a crash can repeat is
what was handled but not yet journaled: one event with a command or function handler, the
current reservation's unflushed events with the sink; never an event the checkpoint recorded.

A stop request (SIGTERM/SIGINT) is honoured between events and during back-off sleeps: the
event in hand finishes, done rows are cleared, and the rest stay in the checkpoint for the next
start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from ..backends.base import WorkerLeases
from ..backends.file import LocalLeases
from ..errors import B24Error, OutcomeUnknownError, TransientError
from .adopt import adopt_orphans
from .authenticity import rejected_ids, token_verdict
from .checkpoint import Checkpoint, Reservation
from .delivery import Delivery, delivery_id, event_id, public_row
from .dlq import DeadLetterQueue
from .handlers import Handler, PermanentFailure, RetryableFailure
from .queue import OfflineQueue, Reserved

__all__ = ["Options", "StopRequested", "Summary", "Worker"]

log = logging.getLogger("b24agent.worker")

#: A reservation the portal answered without a process id (rows already deleted there): it is
#: handled from the checkpoint but has nothing to clear or flag on the portal.
LOCAL_PREFIX = "local-"
REJECT_REASON = "application_token mismatch"


class StopRequested(Exception):
    """Raised out of a back-off sleep when SIGTERM/SIGINT asked the worker to stop."""


@dataclass(frozen=True)
class Options:
    """How the worker runs; the CLI builds this from flags."""

    mode: str = "continuous"  # once | drain | continuous
    sleep_s: float = 10.0
    max_retries: int = 5
    retry_delay_s: float = 1.0
    retry_max_delay_s: float = 60.0
    application_token: str | None = None
    adopt: bool = True
    portal_attempts: int = 6  # tries of a cycle the client gave up on, in once/drain modes
    portal_retry_s: float = 1.0  # first back-off before such a try, doubling
    portal_retry_max_s: float = 60.0


@dataclass
class Summary:
    """The counters printed as the JSON summary line at exit."""

    mode: str
    reserved: int = 0
    resumed: int = 0
    adopted: int = 0
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    cleared: int = 0
    flagged: int = 0
    replayed: int = 0
    reservations: int = 0
    portal_retries: int = 0
    queue_empty: bool = False
    stopped: bool = False
    started: float = field(default_factory=time.monotonic, repr=False)

    def to_json(self, **extra: Any) -> dict[str, Any]:
        data = asdict(self)
        data.pop("started")
        data["duration_s"] = round(time.monotonic() - self.started, 3)
        data.update(extra)
        return data


@dataclass(frozen=True)
class _Result:
    outcome: str | None  # done | dead | None (stopped before it finished)
    attempts: int
    reason: str = ""


class Worker:
    """Moves events from the portal's offline queue to a handler; see the module docstring."""

    def __init__(
        self,
        *,
        queue: OfflineQueue,
        checkpoint: Checkpoint,
        handler: Handler,
        dlq: DeadLetterQueue,
        options: Options,
        portal: str,
        stop: threading.Event,
        wake: threading.Event | None = None,
        mask: Callable[[str], str] = str,
        leases: WorkerLeases | None = None,
    ) -> None:
        self.queue = queue
        self.checkpoint = checkpoint
        self.handler = handler
        self.dlq = dlq
        self.options = options
        self.portal = portal
        self.stop = stop
        #: Set by a valid ONOFFLINEEVENT notice (and by stop requests) to end an idle sleep.
        self.wake = wake or stop
        self.mask = mask
        #: Who owns which reservation across hosts (Redis backend); local: always this worker.
        self.leases = leases or LocalLeases()
        self.summary = Summary(mode=options.mode)
        self._adopt_due = options.adopt
        self._counted_resumed = False
        #: (reservation, ids) whose clear rides with the next ``get`` (``OfflineQueue.turn``).
        self._clear_next: tuple[Reservation, list[str]] | None = None
        #: Delivery ids a replay has attempted, kept across restarts after portal failures.
        self._replayed_ids: set[str] = set()

    # --- entry points ------------------------------------------------------------------------

    def run(self) -> Summary:
        """Work the queue in the configured mode until done, empty or asked to stop."""
        return self._guarded(self._run_queue)

    def replay(self) -> Summary:
        """Feed dead letters back through the handler: the portal's error rows, then local DLQ
        entries the portal no longer holds. Each delivery id is handled at most once per run."""
        return self._guarded(self._run_replay)

    # --- the two loops -----------------------------------------------------------------------

    def _run_queue(self) -> None:
        self._clear_next = None  # a retried run: the checkpoint's reservations say it all
        first = self._prepare(errors=False)
        chained = self.options.mode != "once" and self.queue.can_turn
        while not self.stop.is_set():
            reservation = first.pop() if first else self._reserve(errors=False)
            self.summary.queue_empty = reservation is None
            if reservation is None:
                if self.options.mode != "continuous":
                    return
                self._idle()
                continue
            self._work(reservation, clear_later=chained)
            if self.options.mode == "once":
                return
        self._clear_now()

    def _run_replay(self) -> None:
        first = self._prepare(errors=True)
        local = self.dlq.open_entries()
        seen = self._replayed_ids
        while not self.stop.is_set():
            reservation = first.pop() if first else self._reserve(errors=True)
            if reservation is None:
                break
            ids = {delivery_id(self.portal, row) for row in reservation.pending()}
            repeats = ids & seen
            seen.update(ids)
            # Rows that failed again earlier in this run come back once flagged: settle them as
            # dead without a second attempt, and stop when a batch holds nothing new.
            for row in reservation.pending():
                if delivery_id(self.portal, row) in repeats:
                    self.checkpoint.record(reservation, event_id(row), "dead")
            self._work(reservation)
            if ids and repeats == ids:
                break
        for key, entry in local.items():
            if self.stop.is_set():
                return
            if key not in seen:
                self._replay_local(entry)

    # --- shared steps ------------------------------------------------------------------------

    def _prepare(self, *, errors: bool) -> list[Reservation | None]:
        """Adopt orphans (when due) and finish every reservation the checkpoint holds.

        Where the queue can batch, the scan rides with the loop's first ``get``
        (``OfflineQueue.opening``): that reservation is returned, saved but not worked, as a
        one-item list (``[None]``: the queue was empty); ``[]`` when nothing was reserved yet.
        """
        if not self._counted_resumed:
            self._counted_resumed = True
            self.summary.resumed = sum(
                len(r.pending())
                for r in self.checkpoint.reservations.values()
                if r.source != "adopted"
            )
            if self.summary.resumed:
                log.info("resuming %d saved event(s)", self.summary.resumed)
        first: list[Reservation | None] = []
        if self._adopt_due and self.queue.can_turn:
            first.append(self._open(errors))
        elif self._adopt_due:
            self._adopt()
        for reservation in list(self.checkpoint.reservations.values()):
            if first and reservation is first[0]:
                continue
            self._work(reservation)
            if self.stop.is_set():
                break
        return first

    def _open(self, errors: bool) -> Reservation | None:
        """The orphan scan's first page and the first reservation in one request; the
        reservation is saved before the scan goes on, so later pages never take it for an
        orphan. A refused scan is raised once the reservation is saved, and a lost answer as
        it came: adoption stays due, so the retried run scans again."""
        opening = self.queue.opening(errors=errors)
        reservation = None
        if opening.reserved is not None:
            reservation = self._record(opening.reserved, errors, None)
        if opening.scan_error is not None:
            raise opening.scan_error
        self._adopt(opening.scan_rows)
        if opening.get_error is not None:
            raise opening.get_error
        return reservation

    def _adopt(self, scanned: list[dict[str, Any]] | None = None) -> None:
        """Adopt the orphans of ``scanned`` (the whole scan, when the opening brought it), or
        of a scan made now."""
        token = self.options.application_token
        found = adopt_orphans(self.queue, self.checkpoint, token, self.leases, scanned=scanned)
        self._adopt_due = False
        self.summary.adopted += found.rows
        self._note_rejected(found.rejected)
        if found.rows:
            log.warning(
                "adopted %d reserved event(s) of %d reservation(s) left without a checkpoint",
                found.rows,
                found.reservations,
            )

    def _reserve(self, *, errors: bool) -> Reservation | None:
        settled: tuple[Reservation, list[str]] | None = None
        failure: B24Error | None = None
        try:
            if self._clear_next is None:
                batch = self.queue.reserve(errors=errors)
            else:
                previous, self._clear_next = self._clear_next, None
                batch, failure = self._turn(*previous)
                settled = previous if failure is None else None
        except OutcomeUnknownError:
            # The portal may have reserved rows under an id we never saw: scan before going on.
            self._adopt_due = self.options.adopt
            if not self.options.adopt:
                log.warning(
                    "event.offline.get failed after sending; rows it may have reserved stay "
                    "reserved on the portal (adoption is off)"
                )
            raise
        reservation = self._record(batch, errors, settled)
        if failure is not None:
            raise failure
        return reservation

    def _turn(self, reservation: Reservation, done: list[str]) -> tuple[Reserved, B24Error | None]:
        """Clear ``done`` of ``reservation`` and reserve the next rows in one request: the next
        rows, and the clear's error if the portal refused it (raised once the new rows are
        saved; the old ones stay in the checkpoint and the retried run clears them). A refused
        get is raised at once, after a clear that went through is saved."""
        turn = self.queue.turn(reservation.process_id, done)
        if turn.clear_error is None:
            self.summary.cleared += len(done)
        if turn.get_error is not None:
            if turn.clear_error is None:
                self.checkpoint.settle(reservation, done)
            raise turn.get_error
        assert turn.reserved is not None
        return turn.reserved, turn.clear_error

    def _record(
        self, batch: Reserved, errors: bool, settled: tuple[Reservation, list[str]] | None
    ) -> Reservation | None:
        """Save a reservation to the checkpoint (with the rows ``settled`` forgotten in the same
        write) before anything is handled; None when it is empty."""
        if not batch.rows or (batch.process_id and not self.leases.claim(batch.process_id)):
            # (A reservation another worker adopted between the get and the claim is theirs.)
            if settled is not None:
                self.checkpoint.settle(*settled)
            return None if not batch.rows else self._reserve(errors=errors)
        process_id = batch.process_id or f"{LOCAL_PREFIX}{time.time_ns()}"
        if batch.process_id is None:
            log.warning("event.offline.get returned rows without a process_id: already deleted")
        refused = rejected_ids(self.options.application_token, batch.rows)
        source = "errors" if errors else "queue"
        reservation = self.checkpoint.add(
            process_id, batch.rows, source, rejected=refused, settled=settled
        )
        self.summary.reserved += len(batch.rows)
        self.summary.reservations += 1
        self._note_rejected(len(refused))
        return reservation

    def _work(self, reservation: Reservation, *, clear_later: bool = False) -> None:
        """Hand every pending event on, then settle. A buffered handler's events are journaled
        after one ``flush`` for the lot (events it finished before a stop request included)."""
        if not self._still_ours(reservation):
            return
        flushed: list[str] = []
        grouped = self.handler.buffered and reservation.source != "errors"
        for row in reservation.pending():
            if self.stop.is_set():
                break
            self._check_lease()
            done = self._deliver(reservation, row, record_done=not grouped)
            if done is not None:
                flushed.append(done)
        if flushed:
            self._flush()
            self.checkpoint.record_all(reservation, flushed, "done")
        final = not reservation.pending()
        self._settle(reservation, final=final, clear_later=clear_later and final)

    def _still_ours(self, reservation: Reservation) -> bool:
        """Claim the reservation again before working it; one another worker adopted (our
        lease lapsed) is theirs now, and leaves the checkpoint."""
        pid = reservation.process_id
        if pid.startswith(LOCAL_PREFIX) or self.leases.claim(pid):
            return True
        log.warning("reservation %s was adopted by another worker; leaving it to them", pid)
        self.checkpoint.drop(reservation)
        return False

    def _check_lease(self) -> None:
        if not self.leases.valid():
            raise TransientError(
                "this worker's lease in the shared state lapsed (Redis unreachable or slow)",
                code="WORKER_LEASE_LAPSED",
                hint="the worker resumes from its checkpoint once the lease is renewed",
            )

    def _flush(self) -> None:
        """Make the buffered handler's deliveries durable; if the disk refuses, none of them is
        recorded, and the retried run hands them over again."""
        try:
            self.handler.flush()
        except OSError as exc:
            raise TransientError(
                f"the handler's output could not be made durable: {exc.strerror or exc}",
                code="HANDLER_FLUSH_FAILED",
                hint="check the sink's disk; the events are handed over again on retry",
            ) from None

    def _deliver(
        self, reservation: Reservation, row: dict[str, Any], *, record_done: bool = True
    ) -> str | None:
        """Hand one event on; returns its id when it is done but left for the caller to record
        (``record_done`` False: a buffered handler, recorded after its ``flush``)."""
        replay = reservation.source == "errors"
        first = Delivery(
            delivery_id(self.portal, row),
            self.portal,
            row,
            None if reservation.process_id.startswith(LOCAL_PREFIX) else reservation.process_id,
            1,
            "replay" if replay else "queue",
        )
        result = self._attempt(first)
        if result.outcome is None:
            return None
        if result.outcome == "dead":
            self._dead_letter(first, result)
        elif not record_done:
            return event_id(row)
        elif self.handler.buffered:
            self._flush()
        self.checkpoint.record(reservation, event_id(row), result.outcome)
        if result.outcome == "done" and replay:
            self._close_dead_letter(first.delivery_id)
        return None

    def _close_dead_letter(self, key: str) -> None:
        """A replayed event is done: its DLQ entry is closed for good."""
        self.dlq.resolve(key)
        self.summary.replayed += 1

    def _replay_local(self, entry: dict[str, Any]) -> None:
        """A DLQ entry whose portal row is gone: handle it; nothing to clear on the portal.
        An entry carrying an ``auth`` block (written by another tool) must pass the token
        check; a refused one stays open in the DLQ."""
        if not token_verdict(self.options.application_token, entry["event"]):
            self._note_rejected(1)
            return
        event = public_row(entry["event"])
        first = Delivery(entry["delivery_id"], self.portal, event, None, 1, "replay")
        result = self._attempt(first)
        if result.outcome == "done":
            if self.handler.buffered:
                self._flush()  # the sink's line is on disk before the entry is closed
            self._close_dead_letter(first.delivery_id)
        elif result.outcome == "dead":
            self._dead_letter(first, result)

    def _dead_letter(self, first: Delivery, result: _Result) -> None:
        reason = self.mask(result.reason)
        self.dlq.add(replace(first, attempt=result.attempts), reason)
        self.summary.dead_lettered += 1
        log.warning(
            "event %s dead-lettered after %d attempt(s): %s",
            first.delivery_id,
            result.attempts,
            reason,
        )

    def _attempt(self, first: Delivery) -> _Result:
        """Run the handler with back-off retries; never raises for a handler failure.

        The first try runs outside tenacity, whose machinery cost more than a sink line: most
        events succeed at once. A first failure is handed to tenacity as its attempt 1, so the
        waits, logs and counts are those of a plain tenacity loop.
        """
        attempts = 0
        failed: RetryableFailure | None = None

        def call() -> None:
            nonlocal attempts, failed
            if failed is not None:
                failure, failed = failed, None
                raise failure
            attempts += 1
            self.handler(replace(first, attempt=attempts))

        try:
            call()
        except RetryableFailure as exc:
            failed = exc
        except PermanentFailure as exc:
            return _Result("dead", attempts, f"permanent failure: {exc}")
        else:
            self.summary.handled += 1
            return _Result("done", attempts)
        retrying = Retrying(
            stop=stop_after_attempt(self.options.max_retries + 1),
            wait=wait_exponential_jitter(
                initial=self.options.retry_delay_s,
                max=self.options.retry_max_delay_s,
                jitter=self.options.retry_delay_s,
            ),
            retry=retry_if_exception_type(RetryableFailure),
            sleep=self._sleep_or_stop,
            before_sleep=self._note_retry,
            reraise=True,
        )
        try:
            retrying(call)
        except StopRequested:
            return _Result(None, attempts)
        except (PermanentFailure, RetryableFailure) as exc:
            kind = "permanent failure" if isinstance(exc, PermanentFailure) else "gave up"
            return _Result("dead", attempts, f"{kind}: {exc}")
        self.summary.handled += 1
        return _Result("done", attempts)

    def _settle(self, reservation: Reservation, *, final: bool, clear_later: bool = False) -> None:
        """Tell the portal what is finished, then forget it. Dead rows are flagged only once
        the whole reservation is finished: ``event.offline.error`` goes by MESSAGE_ID and would
        also release a pending row sharing it. With ``clear_later`` the done rows' clear waits
        for the next ``get`` (``_turn``) and the checkpoint keeps them until then."""
        done = reservation.ids_with("done")
        dead = reservation.ids_with("dead") if final else []
        rejected = reservation.ids_with("rejected") if final else []
        self.checkpoint.sync()
        if not reservation.process_id.startswith(LOCAL_PREFIX):
            if done and clear_later:
                self._clear_next = (reservation, done)
                done = []
            elif done:
                self.queue.clear(reservation.process_id, done)
                self.summary.cleared += len(done)
            if dead:
                message_ids = [str(reservation.rows[key].get("MESSAGE_ID", "")) for key in dead]
                self.queue.flag_errors(reservation.process_id, message_ids)
                self.summary.flagged += len(dead)
        if rejected:
            log.error(
                "%d event(s) failed the application_token check; left reserved on the portal "
                "and recorded in the checkpoint's quarantine",
                len(rejected),
            )
        if done or dead or rejected:
            self.checkpoint.settle(
                reservation, done + dead, quarantined=rejected, reason=REJECT_REASON
            )

    def _clear_now(self) -> None:
        """Send a clear still waiting for a next ``get`` on its own (the loop is ending)."""
        if self._clear_next is not None:
            reservation, done = self._clear_next
            self._clear_next = None
            self.queue.clear(reservation.process_id, done)
            self.summary.cleared += len(done)
            self.checkpoint.settle(reservation, done)

    # --- retries, sleeps and counters --------------------------------------------------------

    def _guarded(self, body: Callable[[], None]) -> Summary:
        """Run ``body`` again after portal failures the client gave up on (it resumes from the
        checkpoint); in once/drain modes give up after ``portal_attempts`` tries in a row."""
        forever = self.options.mode == "continuous"
        retrying = Retrying(
            stop=stop_never if forever else stop_after_attempt(self.options.portal_attempts),
            wait=wait_exponential_jitter(
                initial=self.options.portal_retry_s,
                max=self.options.portal_retry_max_s,
                jitter=self.options.portal_retry_s,
            ),
            retry=retry_if_exception_type((TransientError, OutcomeUnknownError)),
            sleep=self._sleep_or_stop,
            before_sleep=self._note_portal_failure,
            reraise=True,
        )
        with contextlib.suppress(StopRequested):
            retrying(body)
        self.summary.stopped = self.stop.is_set()
        return self.summary

    def _idle(self) -> None:
        log.debug("queue empty; sleeping up to %gs", self.options.sleep_s)
        self.wake.wait(self.options.sleep_s)
        if self.wake is not self.stop:
            self.wake.clear()

    def _sleep_or_stop(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise StopRequested

    def _note_retry(self, state: RetryCallState) -> None:
        self.summary.retried += 1
        error = state.outcome.exception() if state.outcome else None
        log.info(
            "handler failed (attempt %d), retrying: %s", state.attempt_number, self.mask(str(error))
        )

    def _note_portal_failure(self, state: RetryCallState) -> None:
        self.summary.portal_retries += 1
        error = state.outcome.exception() if state.outcome else None
        log.warning("portal call failed, retrying from the checkpoint: %s", self.mask(str(error)))

    def _note_rejected(self, count: int) -> None:
        if count:
            self.summary.rejected += count
            log.error("%d event(s) refused: application_token does not match", count)
