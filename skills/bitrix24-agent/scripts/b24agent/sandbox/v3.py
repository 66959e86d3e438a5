"""REST 3.0 specifics (api-reference/rest-v3.md): its error shape and the Idempotency-Key cache.

v2 and v3 share the dispatcher; only the wire format differs, so the translation lives here.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from .errors import PortalError

PREFIX = "BITRIX_REST_V3_EXCEPTION_"
INVALID_JSON = PREFIX + "INVALIDJSONEXCEPTION"
KEY_REUSED = PREFIX + "IDEMPOTENCYKEYREUSEDEXCEPTION"
INVALID_KEY = PREFIX + "INVALIDIDEMPOTENCYKEYEXCEPTION"

#: v2 codes that REST 3.0 documents under its own name (and status).
_V3_CODES: dict[str, tuple[str, int]] = {
    "insufficient_scope": (PREFIX + "INSUFFICIENTSCOPEEXCEPTION", 403),
    "ACCESS_DENIED": (PREFIX + "ACCESSDENIEDEXCEPTION", 403),
    "ERROR_ARGUMENT": (PREFIX + "VALIDATION_REQUESTVALIDATIONEXCEPTION", 400),
}

#: Last name segments of methods that only read; every other method is treated as a write and
#: honours Idempotency-Key (fail closed: an unknown verb is a write).
READ_VERBS = frozenset(
    {"get", "list", "search", "count", "fields", "tail", "openapi", "documentation", "children"}
)

#: Stored responses are kept 24 hours.
KEEP_S = 24 * 3600


def error_body(error: PortalError) -> tuple[int, dict[str, Any]]:
    """(status, body) of a v3 error. Codes without a documented v3 name keep their v2 code."""
    code, status = _V3_CODES.get(error.code, (error.code, error.status))
    body: dict[str, Any] = {"code": code, "message": error.description}
    if "validation" in error.extra:
        body["validation"] = error.extra["validation"]
    elif code.endswith("VALIDATION_REQUESTVALIDATIONEXCEPTION") and "argument" in error.extra:
        body["validation"] = [{"message": error.description, "field": error.extra["argument"]}]
    return status, {"error": body}


def is_write(method: str) -> bool:
    return method.rsplit(".", 1)[-1] not in READ_VERBS


def check_key(key: str) -> None:
    """1 to 255 printable ASCII characters, else 400 INVALIDIDEMPOTENCYKEYEXCEPTION."""
    if not (1 <= len(key) <= 255 and all(" " <= ch <= "~" for ch in key)):
        raise PortalError(
            INVALID_KEY, "Idempotency-Key must be 1 to 255 printable ASCII characters", 400
        )


def fingerprint(params: Any) -> str:
    """Hash of the request body as parsed, so key order and spacing do not matter."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Stored:
    fingerprint: str
    expires_at: float
    body: bytes


class IdempotencyCache:
    """Successful write answers by (app or webhook, user, method, key), kept 24 h.

    Only successes are stored: a failed call may be repeated with the same key and runs again.
    Two requests with one key at the same moment may both run, as the docs warn.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, ...], Stored] = {}

    def lookup(self, key: tuple[str, ...], print_: str) -> bytes | None:
        """The stored body to replay, None to run the call; 422 if the body differs."""
        now = time.time()
        with self._lock:
            stored = self._items.get(key)
            if stored is not None and stored.expires_at <= now:
                del self._items[key]
                stored = None
        if stored is None:
            return None
        if stored.fingerprint != print_:
            raise PortalError(KEY_REUSED, "Idempotency-Key was used with another request body", 422)
        return stored.body

    def store(self, key: tuple[str, ...], print_: str, body: bytes) -> None:
        now = time.time()
        with self._lock:
            if len(self._items) > 10_000:
                self._items = {k: v for k, v in self._items.items() if v.expires_at > now}
            self._items[key] = Stored(print_, now + KEEP_S, body)

    def reset(self) -> None:
        with self._lock:
            self._items.clear()
