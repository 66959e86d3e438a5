"""Who may drain the portal's offline event queue through the broker: the operator's list.

The offline worker reserves rows (``event.offline.get``), deletes the handled ones
(``event.offline.clear``, destructive) and flags failures (``event.offline.error``), unattended
and in a loop. A person cannot approve every one of those calls, and the automatic idempotency
of writes would answer a repeated ``get`` (same params every time) from its record instead of
reserving the next rows. The worker needs neither: its checkpoint and the adoption of orphaned
reservations are what make those calls safe to repeat.

So in broker mode the operator names who may drain: ``B24_BROKER_DRAINERS`` in the broker's own
configuration, a comma list of user names, ``@group`` names and numeric uids, matched against
the caller the kernel reported (SO_PEERCRED), never against anything the caller says. For those
callers a request made only of the queue's methods runs without a per-call approval and without
automatic idempotency (the ceiling, confirmations and the keyed audit still apply). Any other
caller is refused every queue-draining call, planned or direct: unset means nobody (fail closed).
Outside the broker (plain CLI, MCP server on its own) this module changes nothing.
"""

from __future__ import annotations

import grp
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ..errors import PolicyError

__all__ = ["DRAINING", "QUEUE", "allowed_drain", "is_drainer"]

#: The calls that take rows out of the queue (reserve, delete, release to the error pool).
DRAINING = frozenset({"event.offline.get", "event.offline.clear", "event.offline.error"})
#: Everything the worker calls: the draining ones and the read that finds orphaned reservations.
QUEUE = DRAINING | {"event.offline.list"}


def allowed_drain(
    origin: Mapping[str, Any] | None, methods: Iterable[str], drainers: Collection[str]
) -> bool:
    """Whether this request is a drain by a caller the operator named (approval and automatic
    idempotency are then skipped). Raises PolicyError (exit 3) when a brokered request would
    drain the queue and its caller is not named; False for every other request."""
    if origin is None or origin.get("via") != "broker":
        return False
    called = {method.lower() for method in methods}
    if not called & DRAINING:
        return False
    if not is_drainer(origin, drainers):
        who = origin.get("user") or "?"
        raise PolicyError(
            f"the operator has not allowed uid {origin.get('uid')} ({who}) to drain the offline "
            "event queue through the broker (B24_BROKER_DRAINERS)",
            code="DRAIN_NOT_ALLOWED",
            hint="nothing was sent; the operator names the worker's user in the broker's "
            "B24_BROKER_DRAINERS",
        )
    return called <= QUEUE


def is_drainer(origin: Mapping[str, Any], drainers: Collection[str]) -> bool:
    """Whether the kernel-reported caller is in the list: by uid, user name or group (the
    broker also keeps call slots for them)."""
    user = str(origin.get("user") or "").lower()
    for entry in drainers:
        if entry.isdigit() and int(entry) == origin.get("uid"):
            return True
        if user and entry == user:
            return True
        if entry.startswith("@") and _in_group(entry[1:], user, origin.get("gid")):
            return True
    return False


def _in_group(group: str, user: str, gid: Any) -> bool:
    try:
        found = grp.getgrnam(group)
    except KeyError:
        return False
    return found.gr_gid == gid or (bool(user) and user in (m.lower() for m in found.gr_mem))
