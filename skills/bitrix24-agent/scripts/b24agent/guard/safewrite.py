"""Run one write at most once under an idempotency key: the single place retry-safety is decided.

Like stripe-python, the decisions live here and nowhere else: reserve the key (idempotency), on a
retry after an unknown outcome settle the earlier attempt first (reconcile a CRM create by its
ORIGIN_ID, or take the user's ``--idempotency-resolve``), send, then record what happened:

- success: ``done`` with the masked response, replayed to later calls with the same key;
- a definite failure (the portal refused; it was not sent; a rate limit) releases the key, so a
  corrected retry can go;
- a timeout, 5xx or crash after sending (or our own bug while the write was in flight) leaves
  ``outcome_unknown``.

REST 3.0 calls carry the key's external id as ``Idempotency-Key``, the same one on every attempt.
That alone does not make resending after an unknown outcome safe: the portal keeps only
successful answers (rest-v3.md), so a write that failed with a 5xx after changing data runs
again. So v3 writes, like every write that is not a CRM create, wait for
``--idempotency-resolve``; ``failed`` then resends with the same header, and the portal replays
its stored answer if the first attempt did succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import B24Error, OutcomeUnknownError
from .diffing import Reader
from .idempotency import IdempotencyStore, Ticket, request_fingerprint, since
from .reconcile import origin_link

__all__ = ["Resolve", "Send", "WriteOutcome", "run_write"]

Resolve = Literal["failed", "done"]
#: ``send(params, idempotency_key_header)`` performs the call and returns the response body.
Send = Callable[[Mapping[str, Any], str | None], Mapping[str, Any]]
Mask = Callable[[Any], Any]


@dataclass(frozen=True)
class WriteOutcome:
    """The body to print; ``how`` says where it came from: ``sent``, ``replayed``,
    ``reconciled`` (found by ORIGIN_ID) or ``resolved`` (declared done by the user)."""

    body: Mapping[str, Any]
    how: Literal["sent", "replayed", "reconciled", "resolved"]
    key: str
    ticket: Ticket

    @property
    def note(self) -> str | None:
        """One line for stderr when the body did not come from sending the call now."""
        record = self.ticket.record
        again = (
            "; to really run it again, give it its own --idempotency-key"
            if record.get("auto")
            else "; use a new key for a new call"
        )
        notes = {
            "replayed": f"replayed the stored response of idempotency key {self.key!r} (first "
            f"run {since(record['created_at'])}); the call was not sent again{again}",
            "reconciled": f"the earlier attempt under idempotency key {self.key!r} did create the "
            "record (found by its ORIGIN_ID); it was not sent again",
            "resolved": f"recorded idempotency key {self.key!r} as done; nothing was sent",
        }
        return notes.get(self.how)


_RESOLVED_BODY: dict[str, Any] = {"result": None}


def _settle_failure(
    store: IdempotencyStore, ticket: Ticket, exc: BaseException, sent: bool
) -> None:
    """Unknown if the write may have run now or an earlier unknown attempt is still unsettled;
    otherwise (the portal refused it, or it never left) release the key."""
    definite = isinstance(exc, B24Error) and not isinstance(exc, OutcomeUnknownError)
    if (sent and not definite) or (not sent and ticket.status == "recover"):
        store.mark_unknown(ticket)
    else:
        store.release(ticket)


def run_write(
    store: IdempotencyStore,
    *,
    key: str,
    auto: bool,
    method: str,
    api: str,
    params: Mapping[str, Any],
    send: Send,
    read: Reader,
    mask: Mask,
    resolve: Resolve | None = None,
) -> WriteOutcome:
    """Send ``method`` once under ``key``; see the module docstring for every branch."""
    link = origin_link(method) if api == "v2" else None
    recoverable = resolve is not None or link is not None
    ticket = store.begin(
        key,
        fingerprint=request_fingerprint(method, api, params),
        method=method,
        auto=auto,
        recoverable=recoverable,
    )
    if ticket.status == "replay":
        return WriteOutcome(ticket.response or _RESOLVED_BODY, "replayed", key, ticket)
    wire_params, origin_id = link.stamp(params, ticket.external_id) if link else (params, None)
    sent = False
    try:
        if ticket.status == "recover" and resolve == "done":
            store.complete(ticket, _RESOLVED_BODY, how="resolved")
            return WriteOutcome(_RESOLVED_BODY, "resolved", key, ticket)
        if ticket.status == "recover" and resolve is None and link and origin_id:
            found = link.find(params, origin_id, read)
            if found is not None:
                store.complete(ticket, mask(found), how="reconciled")
                return WriteOutcome(found, "reconciled", key, ticket)
        sent = True
        body = send(wire_params, ticket.external_id if api == "v3" else None)
    except BaseException as exc:
        _settle_failure(store, ticket, exc, sent)
        raise
    store.complete(ticket, mask(dict(body)))
    store.sweep()
    return WriteOutcome(body, "sent", key, ticket)
