"""Idempotency records: one file per key saying whether a write ran, is running, or may have run.

Modelled on Stripe's idempotency keys and the IETF ``Idempotency-Key`` header draft. A record
holds the request fingerprint (method, api, params), a state and, once done, the response:

    in_progress ──ok──> done               (same key + same params later: replay the response)
         │ └──definite failure──> removed   (portal refused, not sent: a corrected retry may go)
         └──timeout/5xx/crash──> outcome_unknown
                                   └── a retry settles it (ORIGIN_ID look-up, or the resolve flag)

``begin`` is the only decision point and runs atomically: the first caller creates the record
with ``state.create_exclusive`` (no lock needed on the happy path); everyone else decides under
the folder's lock, so of N racing callers exactly one gets to send. Same key with other params,
or while another process holds the key, is a ConflictError (exit 5). A record whose owner process
died on this host counts as outcome unknown: it may have sent the write before dying.

Explicit keys live ``ttl_s`` (24 h, like Bitrix24 REST 3.0); automatic keys (derived from the
call itself) live ``auto_window_s`` (10 min) and only catch accidental double runs. Every record
also gets an ``external_id``: the explicit key, or a random one for automatic keys, sent as the
REST 3.0 ``Idempotency-Key`` header and stamped into CRM ``ORIGIN_ID``; a random one keeps an
identical call made after the window from colliding with the old one on the portal's side.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from .. import catalog
from ..errors import ConflictError, CorruptStateError, OutcomeUnknownError
from ..fingerprint import digest
from ..state import create_exclusive, file_lock, read_json, write_json_atomic

__all__ = [
    "IdempotencyStore",
    "Ticket",
    "auto_key",
    "request_fingerprint",
    "since",
]

State = Literal["in_progress", "done", "outcome_unknown"]
_RECORD_SCHEMA = {
    "type": "object",
    "required": ["key", "fingerprint", "state", "expires_at", "attempt", "external_id"],
    "properties": {
        "state": {"enum": ["in_progress", "done", "outcome_unknown"]},
        "expires_at": {"type": "number"},
    },
}


def request_fingerprint(method: str, api: str, params: Any) -> str:
    """What "the same request" means: method (case-insensitive), API version and params."""
    return digest({"method": catalog.normalize(method), "api": api, "p": params})


def auto_key(method: str, api: str, params: Any) -> str:
    """The key used when none is given: identical calls share it, so a double run is caught."""
    return "auto-" + request_fingerprint(method, api, params)[:40]


@dataclass(frozen=True)
class Ticket:
    """What ``begin`` decided. ``status``: ``fresh`` (send), ``recover`` (a previous attempt's
    outcome is unknown and this caller now holds the key to settle it) or ``replay``."""

    key: str
    status: Literal["fresh", "recover", "replay"]
    record: dict[str, Any]

    @property
    def external_id(self) -> str:
        return self.record["external_id"]

    @property
    def response(self) -> Any:
        return self.record.get("response")


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the process holding a record may still be running (unknown host: assume yes)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def since(stamp: float) -> str:
    """A record time stamp as UTC ISO 8601, for messages."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class IdempotencyStore:
    """The records of one portal (a folder), one JSON file per key."""

    def __init__(
        self, directory: Path, *, ttl_s: float, auto_window_s: float, in_flight_s: float = 0.0
    ) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        self.auto_window_s = auto_window_s
        #: How long a request may still run on the portal after its sender died (the read
        #: timeout): a record left in progress by a dead process is not settled before that.
        self.in_flight_s = in_flight_s

    def _path(self, key: str) -> Path:
        return self.directory / f"{digest(key)}.json"

    def journal_path(self, key: str) -> Path:
        """Where a write of many lines (a batch file) notes its progress under ``key``."""
        return self.directory / f"{digest(key)}.lines.jsonl"

    def _lock(self) -> FileLock:
        """One lock per folder: decisions are short and local, so contention stays low."""
        return file_lock(self.directory / ".records")

    def _new_record(self, key: str, fingerprint: str, method: str, auto: bool) -> dict[str, Any]:
        now = time.time()
        return {
            "key": key,
            "auto": auto,
            "method": method,
            "fingerprint": fingerprint,
            "state": "in_progress",
            "attempt": secrets.token_hex(8),
            "owner": {"host": socket.gethostname(), "pid": os.getpid()},
            "external_id": ("b24a-" + secrets.token_urlsafe(18)) if auto else key,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + (self.auto_window_s if auto else self.ttl_s),
            "response": None,
        }

    # --- the decision ------------------------------------------------------------------------
    def begin(
        self,
        key: str,
        *,
        fingerprint: str,
        method: str,
        auto: bool = False,
        recoverable: bool = False,
    ) -> Ticket:
        """Reserve ``key`` for this call, or say why not (ConflictError / OutcomeUnknownError).

        ``recoverable``: this call has a way to settle an unknown previous attempt (a CRM create
        it can look up, or ``--idempotency-resolve``); without one, an unknown record is refused
        until the user resolves it.
        """
        path = self._path(key)
        record = self._new_record(key, fingerprint, method, auto)
        if create_exclusive(path, record):
            return Ticket(key, "fresh", record)
        with self._lock():
            existing = read_json(path, schema=_RECORD_SCHEMA)
            now = time.time()
            if existing is None or (
                existing["expires_at"] < now
                and not (existing["state"] == "in_progress" and _alive(existing.get("owner", {})))
            ):
                write_json_atomic(path, record)
                return Ticket(key, "fresh", record)
            if existing["fingerprint"] != fingerprint:
                raise ConflictError(
                    f"idempotency key {key!r} was used for a different request "
                    f"({existing.get('method')}, other params) at {since(existing['created_at'])}",
                    code="IDEMPOTENCY_KEY_REUSED",
                    hint="use a new key for a new request; reuse a key only to repeat a call",
                )
            state = existing["state"]
            if state == "done":
                return Ticket(key, "replay", existing)
            if state == "in_progress" and _alive(existing.get("owner", {})):
                owner = existing.get("owner", {})
                raise ConflictError(
                    f"idempotency key {key!r} is in use by a call still running (pid "
                    f"{owner.get('pid')} on {owner.get('host')}, since "
                    f"{since(existing['updated_at'])})",
                    code="IDEMPOTENCY_KEY_IN_USE",
                    hint="wait for it to finish, then repeat: you will get its result",
                    retryable=True,
                )
            if state == "in_progress" and now - existing["updated_at"] < self.in_flight_s:
                raise _in_flight(key, existing, existing["updated_at"] + self.in_flight_s - now)
            if not recoverable:
                raise _unresolved(key, existing)
            taken = {
                **existing,
                "state": "in_progress",
                "attempt": secrets.token_hex(8),
                "owner": {"host": socket.gethostname(), "pid": os.getpid()},
                "updated_at": now,
            }
            write_json_atomic(path, taken)
            return Ticket(key, "recover", taken)

    # --- settling ----------------------------------------------------------------------------
    def _settle(self, ticket: Ticket, change: Mapping[str, Any] | None) -> None:
        """Apply ``change`` (None: remove the record) if the record is still this attempt's."""
        path = self._path(ticket.key)
        with self._lock():
            current = read_json(path, schema=_RECORD_SCHEMA)
            if current is None or current["attempt"] != ticket.record["attempt"]:
                return
            if change is None:
                path.unlink(missing_ok=True)
            else:
                write_json_atomic(path, {**current, **change, "updated_at": time.time()})

    def complete(self, ticket: Ticket, response: Any, *, how: str = "sent") -> None:
        """The write happened; keep its (masked) response for replays. ``how``: sent,
        reconciled or resolved."""
        self._settle(ticket, {"state": "done", "response": response, "settled_by": how})

    def mark_unknown(self, ticket: Ticket) -> None:
        """The write may have happened: later calls with the key must settle it first."""
        self._settle(ticket, {"state": "outcome_unknown"})

    def release(self, ticket: Ticket) -> None:
        """The write definitely did not happen: free the key so a corrected retry can go."""
        self._settle(ticket, None)

    def sweep(self) -> int:
        """Remove expired settled records, at most once per auto window; returns how many.

        In-progress records are left alone (their owner may still be running), and the marker's
        age keeps this from reading the whole folder on every write.
        """
        marker = self.directory / ".swept"
        now = time.time()
        try:
            if marker.stat().st_mtime > now - self.auto_window_s:
                return 0
        except FileNotFoundError:
            pass
        removed = 0
        with self._lock():
            marker.touch()
            for path in self.directory.glob("*.json"):
                try:
                    record = read_json(path, schema=_RECORD_SCHEMA)
                except CorruptStateError:
                    continue
                if record and record["expires_at"] < now and record["state"] != "in_progress":
                    path.unlink(missing_ok=True)
                    self.journal_path(record["key"]).unlink(missing_ok=True)
                    removed += 1
        return removed


def _in_flight(key: str, record: Mapping[str, Any], wait: float) -> ConflictError:
    owner = record.get("owner", {})
    return ConflictError(
        f"the call holding idempotency key {key!r} (pid {owner.get('pid')}, started "
        f"{since(record['updated_at'])}) ended without settling it; its request may still be "
        "running on the portal, so it cannot be settled yet",
        code="IDEMPOTENCY_KEY_IN_FLIGHT",
        hint=f"repeat the same call in {math.ceil(wait)} s (a request is given B24_READ_TIMEOUT "
        "to finish); nothing was sent now",
        retryable=True,
    )


def _unresolved(key: str, record: Mapping[str, Any]) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"an earlier call with idempotency key {key!r} ({record.get('method')}, "
        f"{since(record['updated_at'])}) may or may not have run; refusing to send it again",
        code="OUTCOME_UNRESOLVED",
        hint="check the portal, then resolve the key as failed (it did not happen: send it "
        "now) or done (it happened)",
    )
