"""What the portal can take at all: params that are plain JSON data, before any other check.

Method schemas (``schemas/``) say what a method wants; this says what can be sent to any method.
Values outside it used to fail deep inside our own code, after the call had been counted as
started, so a local failure was reported as "a write may have run" (exit 7): params nested
thousands deep (RecursionError), integers past Python's 4,300-digit conversion limit (ValueError
on ``str``), lone surrogates (UnicodeEncodeError when encoding UTF-8), and NaN or Infinity, which
``json.dumps`` happily writes as tokens no JSON parser on the portal side accepts. Each is
refused here as a ValidationError (exit 2) that names the field, before anything is sent or
recorded. The walk is iterative, so checking a deep value cannot itself overflow the stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError

__all__ = ["MAX_DEPTH", "MAX_INT_BITS", "check_sendable"]

#: Containers inside containers. Real Bitrix24 params stay under ten (a filter's sub-logic, a
#: multi-field's value list); 32 leaves room and stays far from any recursion limit.
MAX_DEPTH = 32
#: Integers up to about 4,200 decimal digits; Python refuses ``str()`` of those past 4,300.
MAX_INT_BITS = 14_000


def _label(path: tuple[Any, ...]) -> str:
    """``params.fields.TITLE`` for messages; unprintable keys come out escaped, never raw."""
    text = ".".join(["params", *(str(step) for step in path)])
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse(path: tuple[Any, ...], reason: str, hint: str) -> ValidationError:
    field = _label(path)
    return ValidationError(
        f"{field} {reason}",
        code="INVALID_PARAMS",
        hint=hint,
        details={"field": field},
    )


def _text_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _leaf_problem(value: Any) -> tuple[str, str] | None:
    """(reason, hint) when a scalar cannot be sent, else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            return "is an integer too long to send", "send a number of sensible size"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return (
                "is NaN or Infinity, which JSON cannot carry",
                "send a finite number, or null",
            )
        return None
    if isinstance(value, str):
        if not _text_ok(value):
            return (
                "holds a lone surrogate (text that is not valid Unicode)",
                "fix the text's encoding; a \\ud800-style escape must come in a valid pair",
            )
        return None
    return (
        f"is a {type(value).__name__}, not JSON data",
        "use strings, numbers, booleans, null, objects and arrays",
    )


def check_sendable(params: Any) -> None:
    """Raise ValidationError naming the first field of ``params`` no portal could take."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), params)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if len(path) >= MAX_DEPTH:
                raise _refuse(
                    path,
                    f"is nested more than {MAX_DEPTH} levels deep",
                    "flatten the params; no Bitrix24 method takes structures that deep",
                )
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and not _text_ok(key):
                    raise _refuse(
                        path,
                        "has a key holding a lone surrogate (text that is not valid Unicode)",
                        "fix the key's encoding",
                    )
                stack.append(((*path, key), item))
            continue
        problem = _leaf_problem(value)
        if problem is not None:
            raise _refuse(path, *problem)
