"""HMAC key files the broker keeps to itself: the audit chain's key and the plan-signing key.

A key that signs what a caller must not forge (a keyed audit line, a plan, a person's decision
on a plan) has to live where the caller cannot read it. The shared state store is not such a
place: every process that reaches Redis could read a key kept there. So these keys are local
files, made once (0600, never through a link) in the private state folder of the process that
signs, and a missing or unreadable key is a configuration error rather than a fresh key:
signing with a new key would make everything signed before look forged.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from ..errors import ConfigError, CorruptStateError
from ..state import create_exclusive, read_json

__all__ = ["create_key", "load_key"]

_KEY_SCHEMA = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string", "pattern": "^[0-9a-f]{64,}$"}},
}


def create_key(path: Path) -> bool:
    """Make a new key at ``path`` (0600) unless one is there; True when it was made."""
    return create_exclusive(path, {"key": secrets.token_hex(32)})


def load_key(path: Path, *, setting: str) -> bytes:
    """The key at ``path``; ``setting`` names the variable that points at it, for the hint."""
    try:
        stored = read_json(path, schema=_KEY_SCHEMA)
    except (OSError, CorruptStateError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.reason
        stored, problem = None, f"cannot read it: {reason}"
    else:
        problem = "no such file"
    if stored is None:
        raise ConfigError(
            f"key file {path}: {problem}",
            code="KEY_UNREADABLE",
            hint=f"the operator sets {setting}; b24-broker serve makes the key once",
        )
    return bytes.fromhex(stored["key"])
