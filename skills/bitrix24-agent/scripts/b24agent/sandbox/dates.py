"""How the sandbox reads and writes dates.

Bitrix24 writes datetimes as ISO 8601 with the portal's offset (``2024-05-23T18:18:25+02:00``)
and reads them in several spellings. The sandbox stores unix seconds, so ordering and filters
compare numbers, and converts at the edges with these two functions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["iso_datetime", "parse_datetime"]


def parse_datetime(value: Any) -> float:
    """Unix seconds from ISO 8601 (``2024-05-23T18:18:25+02:00``, ``...Z``), ``YYYY-MM-DD``,
    ``YYYY-MM-DD HH:MM:SS`` or ``DD.MM.YYYY``; naive values are the sandbox's local time."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = datetime.strptime(text, "%d.%m.%Y")
        except ValueError:
            raise ValueError(f"not a date: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


def iso_datetime(seconds: float) -> str:
    """ISO 8601 with the sandbox's offset, as Bitrix24 writes datetimes."""
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
