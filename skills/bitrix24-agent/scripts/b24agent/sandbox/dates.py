"""How the sandbox reads and writes dates.

Bitrix24 writes datetimes as ISO 8601 with the portal's offset (``2024-05-23T18:18:25+02:00``)
and reads them in several spellings. The sandbox stores unix seconds, so ordering and filters
compare numbers, and converts at the edges with these two functions.
"""

from __future__ import annotations

import functools
import time
from datetime import date, datetime
from typing import Any

__all__ = ["iso_date", "iso_datetime", "parse_datetime"]


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


#: Offsets are looked up once per quarter hour of unix time: every zone in use changes its
#: offset on a quarter-hour boundary, and a bucket whose two ends disagree is never cached.
_ZONE_BUCKET_S = 900
_ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"


def _offset_at(seconds: float) -> int:
    offset = datetime.fromtimestamp(seconds).astimezone().utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _suffix(offset: int) -> str:
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


@functools.lru_cache(maxsize=65536)
def _zone(bucket: int, zone_names: tuple[str, str]) -> tuple[int, str] | None:
    """(offset seconds, "+HH:MM") of the local zone through one quarter hour, or None when
    the offset changes inside it (a DST switch off the grid): then each moment is looked up.
    ``zone_names`` (``time.tzname``) is part of the key, so a ``tzset`` is never answered
    from the old zone's entries."""
    start = bucket * _ZONE_BUCKET_S
    offset = _offset_at(start)
    if offset % 60 or _offset_at(start + _ZONE_BUCKET_S - 1) != offset:
        return None
    return offset, _suffix(offset)


def iso_datetime(seconds: float) -> str:
    """ISO 8601 with the sandbox's offset, as Bitrix24 writes datetimes.

    A list of 2,500 leads writes 12,500 of these, so the zone's offset comes from a cache
    instead of a local-zone lookup per date (it was a quarter of the sandbox's export time).
    """
    # Stored datetimes are whole seconds; a float takes datetime's own microsecond rounding.
    zone = _zone(seconds // _ZONE_BUCKET_S, time.tzname) if type(seconds) is int else None
    if zone is None:
        return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    offset, suffix = zone
    return time.strftime(_ISO_SECONDS, time.gmtime(seconds + offset)) + suffix


@functools.lru_cache(maxsize=4096)
def iso_date(value: str) -> str:
    """A ``YYYY-MM-DD`` date as Bitrix24 writes it: local midnight with the sandbox's offset."""
    midnight = datetime.combine(date.fromisoformat(value), datetime.min.time())
    return midnight.astimezone().isoformat()
