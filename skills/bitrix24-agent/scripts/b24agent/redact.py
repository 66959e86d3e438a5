"""Mask secrets in any text or JSON before it reaches stdout, stderr, logs, audit or plan files.

Two nets, because either alone leaks: every configured secret value is masked wherever it
appears (a portal may echo a token inside an error description), and values under keys or in
URL positions that always hold secrets are masked even when we never knew the value (a token
rotated by another process, the ``auth[...]`` block of an event).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "SECRET_KEYS", "Redactor"]

MASK = "***"

#: Keys whose values are secrets wherever they appear (compared case-insensitively).
SECRET_KEYS = frozenset(
    {
        "auth",
        "access_token",
        "refresh_token",
        "client_secret",
        "application_token",
        "password",
        "webhook_code",
        "webhook_url",
        "authorization",
        "b24_webhook_code",
        "b24_webhook_url",
        "b24_access_token",
        "b24_refresh_token",
        "b24_client_secret",
        "b24_application_token",
    }
)

#: Each pattern with what any match must contain: a literal, as written (None: nothing), and
#: lower-case substrings one of which must be in the lower-cased text. Checking them with ``in``
#: first skips the regex for text that cannot match, which is nearly all export output: masking
#: 10,000 exported leads went from 0.85 s to a few milliseconds. The literal comes first since
#: it needs no lower-cased copy and ``=`` is found at memchr speed: of an export's masking
#: time, 3 of 5 substring scans over every block went (issue 19).
_PATTERNS: tuple[tuple[re.Pattern[str], str | None, tuple[str, ...]], ...] = (
    # Webhook credentials in a REST path: /rest/1/CODE/ and /rest/api/1/CODE/.
    (re.compile(r"(/rest/(?:api/)?\d+/)([^/\s?#\"']+)"), "/rest/", ()),
    # Secrets in query strings, form bodies and bracketed event fields.
    (
        re.compile(
            r"((?:access_token|refresh_token|client_secret|application_token|auth)(?:\]|%5D)?=)"
            r"([^&\s\"']+)",
            re.IGNORECASE,
        ),
        "=",
        ("_token", "client_secret", "auth"),
    ),
    # A header value: the token follows on the same line (a newline never joins two lines).
    (re.compile(r"(Bearer[ \t]+)(\S+)", re.IGNORECASE), None, ("bearer",)),
)


class Redactor:
    """Masks known secret values and secret-shaped positions in text and JSON-like objects."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember one more secret (a token rotated at run time); empty values are ignored."""
        if not secret:
            return
        with self._lock:
            if secret not in self._secrets:
                # Longest first, so a secret containing another is masked whole.
                self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def mask(self, text: str) -> str:
        """``text`` with every known secret and every secret-shaped value replaced by MASK."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
            # A replacement can join with its neighbours into the secret again ("ab" + MASK...);
            # repeat while that happens. Each pass shortens the text, so this ends.
            while len(secret) > len(MASK) and secret in text:
                text = text.replace(secret, MASK)
        lowered: str | None = None
        for pattern, literal, needles in _PATTERNS:
            if literal is not None and literal not in text:
                continue
            if needles:
                lowered = text.lower() if lowered is None else lowered
                if not any(needle in lowered for needle in needles):
                    continue
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
            lowered = None
        return text

    def mask_obj(self, obj: Any) -> Any:
        """A copy of a JSON-like object with secret keys and secret values masked. A loop, not
        recursion: a portal's answer may nest as deep as the JSON reader goes (some 990
        levels), deeper than Python calls may, and a write's answer is masked after it ran."""
        root: list[Any] = [None]
        todo: list[tuple[Any, Any, Any]] = [(obj, root, 0)]  # (value, copy to fill, its slot)
        while todo:
            value, into, slot = todo.pop()
            if isinstance(value, Mapping):
                into[slot] = copied = dict.fromkeys(value)
                for key, item in value.items():
                    if str(key).lower() in SECRET_KEYS:
                        copied[key] = MASK
                    else:
                        todo.append((item, copied, key))
            elif isinstance(value, (list, tuple)):
                into[slot] = listed = [None] * len(value)
                todo.extend((item, listed, index) for index, item in enumerate(value))
            else:
                into[slot] = self.mask(value) if isinstance(value, str) else value
        return root[0]
