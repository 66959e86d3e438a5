"""Reading method parameters the lenient way Bitrix24 does: any key case, ids as text or numbers,
one value or a list, ``Y``/``N`` or booleans. Shared by the method modules that came after the
core domain, so each handler reads its input in one line and answers with its own error text.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..encoding import php_map

__all__ = ["arg", "decode_file", "flag", "id_list", "positive_int", "upper_keys"]


def arg(params: Any, name: str, default: Any = None) -> Any:
    """A parameter by name, whatever its case (``TASKID``, ``taskId``); ``default`` if absent."""
    if not isinstance(params, dict):
        return default
    lowered = name.lower()
    return next((v for k, v in params.items() if str(k).lower() == lowered), default)


def upper_keys(params: Any) -> dict[str, Any]:
    """A map with UPPER_CASE keys (``{}`` for anything that is not a map)."""
    try:
        return {str(k).upper(): v for k, v in php_map(params).items()}
    except TypeError:
        return {}


def positive_int(raw: Any) -> int | None:
    """``raw`` as an integer above zero, or None (``"12"``, ``12`` and ``12.0`` all count)."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        number = float(str(raw).strip())
    except ValueError:
        return None
    return int(number) if number == int(number) and number > 0 else None


def id_list(raw: Any) -> list[int]:
    """``integer | integer[]`` (or a PHP-style map of them) as positive ints, order kept,
    duplicates and unreadable entries dropped."""
    if raw is None or raw == "":
        return []
    items = list(php_map(raw).values()) if isinstance(raw, (dict, list)) else [raw]
    ids = [positive_int(item) for item in items]
    return list(dict.fromkeys(i for i in ids if i is not None))


def flag(raw: Any, default: bool = False) -> bool:
    """``Y``/``N``, ``true``/``false``, ``1``/``0`` as a bool; ``default`` when absent."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().upper() in ("Y", "1", "TRUE")


def decode_file(raw: Any) -> tuple[str, int] | None:
    """A ``[name, base64]`` file pair (files/how-to-upload-files.md) as (name, size in bytes);
    None when it is not such a pair or the content is not base64."""
    try:
        name, content = list(php_map(raw).values())
        data = base64.b64decode(str(content), validate=True)
    except (TypeError, ValueError, binascii.Error):
        return None
    name = str(name).strip()
    return (name, len(data)) if name else None
