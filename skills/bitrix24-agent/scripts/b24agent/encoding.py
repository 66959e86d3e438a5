"""PHP-style query encoding shared by the client and the sandbox portal.

Bitrix24 is a PHP application: form bodies, query strings and the command strings inside ``batch``
use PHP's bracket syntax (``fields[TITLE]=A``, ``select[]=ID``, ``filter[>ID]=5``), and its JSON
follows PHP's array rules (an empty map is ``[]``; a map keyed ``0..n-1`` is a list). Both sides of
this project speak that dialect through this one module so they cannot drift apart.

It also holds the one JSON reader for text from outside (a portal's answer, the token server's,
the caller's params and batch files): ``loads_strict``, which takes JSON as RFC 8259 has it and
refuses what Python's reader adds (see there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

__all__ = [
    "STRICT_JSON",
    "build_batch_command",
    "decode_pairs",
    "decode_query",
    "encode_query",
    "flatten_params",
    "loads_strict",
    "parse_batch_command",
    "php_map",
    "php_truthy",
    "phpify",
]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number past a float's range")
    return value


#: A decoder refusing ``NaN``, ``Infinity`` and numbers that overflow to them (``1e999``):
#: Python's own reader takes these, and its writer then prints ``Infinity``, which is not JSON,
#: so a portal sending one would make our stdout unreadable to jq or JSON.parse.
STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` with ``STRICT_JSON``'s rules, and its other limits (nesting past the
    recursion limit, integers past 4,300 digits, bytes that are not UTF-8) as ValueError;
    JSONDecodeError and UnicodeDecodeError are ValueErrors too. So a caller catching ValueError
    has every way a text can fail to be JSON, and a RecursionError never escapes to be taken
    for a bug."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _scalar(value: Any) -> str:
    """Render a leaf the way PHP's http_build_query does (True -> "1", False -> "0")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested params into ``(bracket_key, value)`` pairs, PHP http_build_query style.

    Lists become indexed keys (``select[0]=ID``), which PHP reads back as a list; ``None`` leaves
    are dropped, as PHP drops nulls; an empty list or map is dropped too, because PHP has no way
    to express it in a query string.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        pairs.extend(_flatten_value(name, value))
    return pairs


def _flatten_value(name: str, value: Any) -> Iterable[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return flatten_params(value, name)
    if isinstance(value, (list, tuple)):
        return flatten_params({str(i): item for i, item in enumerate(value)}, name)
    return [(name, _scalar(value))]


def encode_query(params: Mapping[str, Any]) -> str:
    """Encode params as a URL query string with PHP bracket nesting (brackets percent-encoded)."""
    return urlencode(flatten_params(params), quote_via=quote)


def build_batch_command(method: str, params: Mapping[str, Any] | None = None) -> str:
    """Build one ``batch`` command string: ``method?query``.

    ``$result[...]`` references must survive encoding as text the portal can still find, and
    Bitrix24 decodes the query before resolving references, so plain percent-encoding is right.
    """
    query = encode_query(params or {})
    return f"{method}?{query}" if query else method


def _split_key(key: str) -> list[str]:
    """Split ``a[b][c][]`` into ``["a", "b", "c", ""]`` following PHP's parse_str rules."""
    head, sep, rest = key.partition("[")
    if not sep or not head:
        return [key]
    parts = [head]
    while rest:
        inner, close, rest = rest.partition("]")
        if not close:
            # PHP keeps an unterminated bracket as part of the literal key.
            return [key]
        parts.append(inner)
        if not rest.startswith("["):
            break
        rest = rest[1:]
    return parts


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Rebuild nested params from bracket-keyed pairs, then apply PHP's list rule (see phpify)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split_key(key)
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":
                part = str(_next_index(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return phpify(root)


def _next_index(node: Mapping[str, Any]) -> int:
    """PHP's ``[]`` appends at one past the largest integer key so far."""
    numbers = [int(k) for k in node if k.lstrip("-").isdigit()]
    return max(numbers) + 1 if numbers else 0


def decode_query(query: str) -> dict[str, Any]:
    """Decode a PHP bracket query string into nested params (dicts, lists, string leaves)."""
    return decode_pairs(parse_qsl(query, keep_blank_values=True))


def parse_batch_command(command: str) -> tuple[str, dict[str, Any]]:
    """Split a batch command string into its method name and decoded params."""
    method, _, query = command.partition("?")
    return method.strip(), decode_query(query)


def phpify(value: Any) -> Any:
    """Apply PHP's array rule recursively: a map keyed exactly ``0..n-1`` becomes a list."""
    if isinstance(value, Mapping):
        converted = {str(k): phpify(v) for k, v in value.items()}
        keys = list(converted)
        if keys and keys == [str(i) for i in range(len(keys))]:
            return list(converted.values())
        return converted
    if isinstance(value, list):
        return [phpify(v) for v in value]
    return value


def php_map(value: Any) -> dict[str, Any]:
    """Read a value that is a map in PHP terms: ``[]``, ``{}``, a list (keys 0..n-1) or None."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    raise TypeError(f"expected a map, [] or a list, got {type(value).__name__}")


def php_truthy(value: Any) -> bool:
    """PHP truthiness: "", "0", 0, None, [] and {} are false; all else (even "false") is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value not in ("", "0")
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return True
