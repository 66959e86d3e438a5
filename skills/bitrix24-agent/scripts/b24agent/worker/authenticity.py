"""The ``application_token`` check: does a payload really come from the portal the app lives on?

Bitrix24 puts the app's secret ``application_token`` into the ``auth`` block of everything it
*pushes*: online events and the ``onOfflineEvent`` queue notice (on-offline-event.md). Rows
*pulled* with ``event.offline.get`` carry no ``auth`` block (event-offline-get.md: ID,
TIMESTAMP_X, EVENT_NAME, EVENT_DATA, EVENT_ADDITIONAL, MESSAGE_ID): they are the answer to our
own authenticated call, so the channel proves their origin. So the token is checked where it
exists: on queue notices (wakeup.py, strictly: no token, no wake-up) and on any row or replayed
payload that carries an ``auth`` block, which is refused when the block lacks the token or holds
another one: never handled, never cleared. Comparison is constant time so the token cannot be
guessed byte by byte from response timing.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from .delivery import event_id

__all__ = ["carried_token", "rejected_ids", "token_matches", "token_verdict"]


def carried_token(payload: Mapping[str, Any]) -> str | None:
    """The ``application_token`` a payload carries (``auth.application_token``), if any."""
    auth = payload.get("auth")
    if isinstance(auth, Mapping):
        token = auth.get("application_token")
        if isinstance(token, str) and token:
            return token
    return None


def token_matches(expected: str, payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` carries exactly ``expected`` (a missing token never matches)."""
    token = carried_token(payload) or ""
    return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))


def token_verdict(expected: str | None, payload: Mapping[str, Any]) -> bool:
    """Whether to accept a queue row: False when a token is configured and the row has an
    ``auth`` block whose token is missing or different (a pulled row has no block: accepted)."""
    if not expected or "auth" not in payload:
        return True
    return token_matches(expected, payload)


def rejected_ids(expected: str | None, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """IDs of the rows ``token_verdict`` refuses, decided before the rows are stored."""
    return [event_id(row) for row in rows if not token_verdict(expected, row)]
