"""Canonical JSON and SHA-256 digests: how the safety records recognise "the same call".

Plans, idempotency records and the audit chain all compare calls or lines by digest. They must
agree on one canonical form (sorted keys, no insignificant whitespace, UTF-8), or two spellings
of the same params would look like different calls, and an idempotency key would be refused as
reused with other params when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "digest"]


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: same data, same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    """SHA-256 hex digest of ``value``'s canonical JSON. A lone surrogate (text that is not
    valid Unicode) is hashed as its code point rather than failing: a refused call's params are
    still digested for its audit line; valid text hashes exactly as plain UTF-8."""
    return hashlib.sha256(canonical_json(value).encode("utf-8", "surrogatepass")).hexdigest()
