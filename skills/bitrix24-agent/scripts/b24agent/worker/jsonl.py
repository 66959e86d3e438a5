"""JSON Lines files that survive crashes: append a record (fsynced when it must be durable at
once), and read them back after a crash.

The worker keeps three such files: the DLQ and the default sink, fsynced per record because the
next step (flagging the row on the portal, or counting the event as done) relies on them, and
the checkpoint journal, fsynced in groups (see checkpoint.py). A crash can leave at most the last
line torn; readers skip that tail and writers cut it before appending, since the record it held
was never acknowledged. A bad line anywhere else means the file was damaged by something else,
which is reported like any corrupt state file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..state import CorruptStateError, fsync_dir

__all__ = ["JsonlWriter", "read_jsonl"]

_CHUNK = 65536


class JsonlWriter:
    """An append-only JSONL file kept open; ``append`` returns once the line is on disk."""

    def __init__(self, path: Path, *, mode: int = 0o600) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        if created:
            fsync_dir(path.parent)
        _drop_torn_tail(path, self._fd)

    def append(self, record: Any, *, sync: bool = True) -> None:
        """Write ``record`` as one line; with ``sync`` (default) fsync before returning.

        Without ``sync`` the line survives the process being killed (it is in the page cache)
        but not a power cut until ``sync()``; callers use that only for records whose loss can
        cause a repeat, never a loss.
        """
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        if sync:
            os.fsync(self._fd)

    def sync(self) -> None:
        os.fsync(self._fd)

    def truncate(self) -> None:
        """Empty the file (its records were folded into a snapshot that is already on disk)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path, fd: int) -> None:
    """Cut a partial last line left by a crash, so the next record starts on a line of its own
    (that partial record was never acknowledged to anyone, so nothing is lost). Reads only the
    tail: a sink may hold millions of lines."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(_CHUNK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            if position + step == end and chunk.endswith(b"\n"):
                return
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                position += cut + 1
                break
    if position < end:
        os.ftruncate(fd, position)
        os.fsync(fd)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of ``path`` (none when absent). A torn last line is skipped; any other line
    that is not a JSON object raises CorruptStateError naming the file and line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if last and not complete:
                return  # the crash tail: written but never fsynced as a whole line
            raise CorruptStateError(path, None, f"line {number} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise CorruptStateError(path, None, f"line {number} is not a JSON object")
        yield record
