"""Fault injection: make chosen methods fail so client retry and recovery paths can be tested.

Admin ``POST /_sandbox/faults`` with ``{"rules": [...], "seed": 7}`` replaces the rule list (an
empty list clears it). Each rule is a JSON object:

``method``        glob over lower-case method names (``crm.lead.*``, ``batch``); the token server
                  answers as ``oauth.token``. Required.
``error``         error code to answer (default ``INTERNAL_SERVER_ERROR``); ``null`` answers no
                  error, which with ``delay_ms`` makes a pure slow-down rule.
``description``   error_description (default: a short sandbox note).
``status``        HTTP status (default 500).
``times``         fire for the next N matching calls, then the rule is spent.
``rate``          fire with this probability (0..1) on each matching call; ``seed`` at the top
                  level makes the draw repeatable. Without ``times`` or ``rate`` a rule fires on
                  every matching call.
``after``         true: the method runs (its change is made) and the error is answered anyway, the
                  "outcome unknown" case a client must not blindly retry.
``body``          answer this raw text instead of a JSON error body (an HTML error page, truncated
                  JSON, ...), with ``content_type`` (default ``text/html; charset=utf-8``).
``delay_ms``      sleep this long before answering (client timeout tests).
``repeat``        send ``body`` this many times over (a huge answer that never crosses the admin
                  API); default 1.
``gzip``          true: send the body gzip-compressed (``Content-Encoding: gzip``), built a piece
                  at a time, so a gzip bomb of gigabytes costs the sandbox kilobytes.

The first matching rule that fires wins. Batch commands are matched one by one; a ``body`` rule
hit inside a batch turns the whole HTTP answer into that raw body.
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import PortalError, argument_error

_KEYS = {
    "method",
    "error",
    "description",
    "status",
    "times",
    "rate",
    "after",
    "body",
    "content_type",
    "delay_ms",
    "repeat",
    "gzip",
}


class RawAnswer(Exception):
    """Answer the HTTP request with these raw bytes instead of a JSON body."""

    def __init__(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"raw answer {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


@dataclass
class Fault:
    """One rule. ``times`` None means unlimited; the registry decrements it as rules fire."""

    method: str
    error: str | None = "INTERNAL_SERVER_ERROR"
    description: str = "Fault injected by the sandbox"
    status: int = 500
    times: int | None = None
    rate: float | None = None
    after: bool = False
    body: str | None = None
    content_type: str = "text/html; charset=utf-8"
    delay_ms: int = 0
    repeat: int = 1
    gzip: bool = False

    def fire(self) -> None:
        """Sleep if asked, then raise the configured answer (no-op for a pure delay rule)."""
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
        if self.body is not None:
            body, headers = self._raw(self.body.encode("utf-8"))
            raise RawAnswer(self.status, body, self.content_type, headers)
        if self.error is not None:
            raise PortalError(self.error, self.description, self.status)

    def _raw(self, text: bytes) -> tuple[bytes, dict[str, str]]:
        """The body (``repeat`` times) and the headers it needs."""
        if not self.gzip:
            return text * self.repeat, {}
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper
        packed = [packer.compress(text) for _ in range(self.repeat)]
        return b"".join([*packed, packer.flush()]), {"Content-Encoding": "gzip"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise argument_error(message, "rules")


def parse_rule(raw: Any) -> Fault:
    """Validate one admin rule; a bad rule is an ERROR_ARGUMENT, never a half-applied list."""
    _require(isinstance(raw, dict), "each rule must be an object")
    unknown = set(raw) - _KEYS
    _require(not unknown, f"unknown rule keys: {sorted(unknown)}")
    _require(isinstance(raw.get("method"), str) and raw["method"] != "", "rule needs a method")
    _require(not ("times" in raw and "rate" in raw), "give times or rate, not both")
    rule = Fault(method=raw["method"].lower())
    if "error" in raw:
        _require(raw["error"] is None or isinstance(raw["error"], str), "error must be a string")
        rule.error = raw["error"]
    for key, kind in (("description", str), ("body", str), ("content_type", str)):
        if key in raw:
            _require(isinstance(raw[key], kind), f"{key} must be a string")
            setattr(rule, key, raw[key])
    for key in ("status", "times", "delay_ms", "repeat"):
        if key in raw:
            value = raw[key]
            _require(isinstance(value, int) and not isinstance(value, bool), f"{key}: integer")
            _require(value >= 0, f"{key} must not be negative")
            setattr(rule, key, value)
    _require(100 <= rule.status <= 599, "status must be an HTTP status")
    if "rate" in raw:
        rate = raw["rate"]
        _require(isinstance(rate, (int, float)) and 0 <= rate <= 1, "rate must be in 0..1")
        rule.rate = float(rate)
    rule.after = bool(raw.get("after", False))
    rule.gzip = bool(raw.get("gzip", False))
    _require(rule.repeat >= 1, "repeat must be at least 1")
    return rule


class Faults:
    """The active rule list, consulted by the portal for every method call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self._random = random.Random()

    def set(self, rules: Any, seed: Any = None) -> int:
        _require(isinstance(rules, list), "rules must be a list")
        parsed = [parse_rule(raw) for raw in rules]
        with self._lock:
            self._rules = parsed
            self._random = random.Random(seed)
        return len(parsed)

    def pick(self, method: str) -> Fault | None:
        """The rule that fires for this call of ``method`` (lower case), if any."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if not fnmatch.fnmatchcase(method, rule.method):
                    continue
                if rule.times is not None:
                    if rule.times == 0:
                        continue
                    rule.times -= 1
                    return rule
                if rule.rate is None or self._random.random() < rule.rate:
                    return rule
        return None

    def reset(self) -> None:
        self.set([])
