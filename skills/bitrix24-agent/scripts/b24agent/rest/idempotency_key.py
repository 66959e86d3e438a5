"""What an idempotency key may be: the one check, for the library and the CLI alike.

REST 3.0 takes it as the ``Idempotency-Key`` header (rest-v3.md): 1 to 255 printable ASCII
characters. The guard's records (v2 and v3) use the same rule, so a key that works for one works
for the other, and a header the portal would reject never leaves.
"""

from __future__ import annotations

from ..errors import ValidationError

__all__ = ["MAX_LENGTH", "validate_idempotency_key"]

MAX_LENGTH = 255


def validate_idempotency_key(key: str) -> str:
    """Return ``key`` unchanged, or raise ValidationError (exit 2) naming the rule."""
    if not 1 <= len(key) <= MAX_LENGTH or not all(" " <= ch <= "~" for ch in key):
        raise ValidationError(
            f"an idempotency key is 1 to {MAX_LENGTH} printable ASCII characters",
            code="INVALID_IDEMPOTENCY_KEY",
            hint="use e.g. a UUID or 'form-<submission id>'",
            details={"field": "idempotency_key"},
        )
    return key
