"""Idempotency records: one file per key saying whether a write ran, is running, or may have run.

Modelled on Stripe's idempotency keys and the IETF ``Idempotency-Key`` header draft. A record
holds the request fingerprint (method, api, params), a state and, once done, the response:

    in_progress ──ok──> done               (same key + same params later: replay the response)
         │ └──definite failure──> removed   (portal refused, not sent: a corrected retry may go)
         └──timeout/5xx/crash──> outcome_unknown
                                   └── a retry settles it (ORIGIN_ID look-up, or the resolve flag)

``begin`` is the only decision point and runs atomically: the first caller creates the record
exclusively (no lock needed on the happy path); everyone else decides in one atomic step of the
state backend (the folder's lock, or a Redis transaction), so of N racing callers on any number
of hosts exactly one gets to send. Same key with other params,
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

from .. import catalog
from ..backends.base import Change, Documents
from ..errors import ConflictError, CorruptStateError, OutcomeUnknownError
from ..fingerprint import digest

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


#: Settled records stay this long past their expiry in stores that expire them by themselves.
_KEEP_AFTER_EXPIRY_S = 3600.0


def _expiry(record: Any) -> float | None:
    return record["expires_at"] + _KEEP_AFTER_EXPIRY_S if isinstance(record, dict) else None


class IdempotencyStore:
    """The records of one portal, one document per key (a file in the records folder, or a Redis
    key shared by the fleet). A batch file's line journal stays a local file in ``journals``:
    it notes what this host sent."""

    def __init__(
        self,
        records: Documents,
        *,
        journals: Path,
        ttl_s: float,
        auto_window_s: float,
        in_flight_s: float = 0.0,
    ) -> None:
        self.records = records
        self.journals = journals
        self.ttl_s = ttl_s
        self.auto_window_s = auto_window_s
        #: How long a request may still run on the portal after its sender died (the read
        #: timeout): a record left in progress by a dead process is not settled before that.
        self.in_flight_s = in_flight_s

    @staticmethod
    def _name(key: str) -> str:
        return f"{digest(key)}.json"

    def journal_path(self, key: str) -> Path:
        """Where a write of many lines (a batch file) notes its progress under ``key``."""
        return self.journals / f"{digest(key)}.lines.jsonl"

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
        record = self._new_record(key, fingerprint, method, auto)
        name = self._name(key)
        if self.records.create(name, record, expires_at=_expiry(record)):
            return Ticket(key, "fresh", record)

        def decide(existing: Any) -> tuple[Any, Ticket]:
            now = time.time()
            if existing is None or (
                existing["expires_at"] < now
                and not (existing["state"] == "in_progress" and _alive(existing.get("owner", {})))
            ):
                return record, Ticket(key, "fresh", record)
            if existing["fingerprint"] != fingerprint:
                raise ConflictError(
                    f"idempotency key {key!r} was used for a different request "
                    f"({existing.get('method')}, other params) at {since(existing['created_at'])}",
                    code="IDEMPOTENCY_KEY_REUSED",
                    hint="use a new key for a new request; reuse a key only to repeat a call",
                )
            state = existing["state"]
            if state == "done":
                return Change.KEEP, Ticket(key, "replay", existing)
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
            return taken, Ticket(key, "recover", taken)

        return self.records.transact(name, decide, schema=_RECORD_SCHEMA, expires_at=_expiry)

    # --- settling ----------------------------------------------------------------------------
    def _settle(self, ticket: Ticket, change: Mapping[str, Any] | None) -> None:
        """Apply ``change`` (None: remove the record) if the record is still this attempt's."""

        def apply(current: Any) -> tuple[Any, None]:
            if current is None or current["attempt"] != ticket.record["attempt"]:
                return Change.KEEP, None
            if change is None:
                return Change.DELETE, None
            return {**current, **change, "updated_at": time.time()}, None

        self.records.transact(
            self._name(ticket.key), apply, schema=_RECORD_SCHEMA, expires_at=_expiry
        )

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

        In-progress records are left alone (their owner may still be running); stores whose
        records expire by themselves (Redis) have nothing to sweep.
        """
        now = time.time()

        def expired(name: str, modified: float, load: Any) -> bool:
            if not name.endswith(".json"):
                return False
            try:
                record = load()
            except CorruptStateError:
                return False
            if record and record["expires_at"] < now and record["state"] != "in_progress":
                self.journal_path(record["key"]).unlink(missing_ok=True)
                return True
            return False

        return self.records.sweep(expired, every=self.auto_window_s, schema=_RECORD_SCHEMA)


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
