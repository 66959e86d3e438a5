"""Files b24-mcp writes for the agent: full exports (JSONL) and answers too big to return.

They go only to the operator's folder (``B24_MCP_EXPORT_DIR``, default ``STATE/exports``); the
agent picks no path, so a tool call cannot overwrite a file elsewhere. The folder is created
0700; each file is created new (never following a symlink), 0600, written under a ``.part``
name and renamed when complete, so a file with the final name is always whole.

The folder shares its disk with the token store, the audit chain and the plans, and the model
decides how often a file is made, so it has a budget (review7 L4): files older than KEEP_S are
removed, and so are the oldest ones while the folder holds more than ``B24_MCP_EXPORT_MAX_MB``;
a file that alone would pass that is refused (EXPORT_TOO_LARGE) and removed.

A server killed mid-export (SIGKILL, or a host that stops it while a file is written) leaves its
``.part``, which would count against the budget, so a few killed big exports would refuse every
export after them (review8 M2). A ``.part`` name carries its writer's pid; at start and before
each new file, a ``.part`` of this user's whose writer is gone is removed: its pid runs no
process, or runs one that started after the file was last written (the pid was reused), or is
this process, which knows the files it writes (a container gives a server the same pid at every
start). A ``.part`` without a pid, or whose writer cannot be told, goes once STALE_PART_S old.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, cast

from ..errors import B24Error, ConfigError, UsageError
from ..state import fsync_dir

__all__ = ["ExportFolder"]


#: ``B24_MCP_EXPORT_MAX_MB``'s default: the most the folder holds (1 GiB).
DEFAULT_MAX_BYTES = 1024 << 20
#: Finished files older than this (a week) are removed when the next one is made.
KEEP_S = 7 * 86400
#: A ``.part`` file not written for this long (a day) belongs to no running export.
STALE_PART_S = 86400
#: What the budget counts and removes: the files this module names (``_name``), nothing else.
_MADE_HERE = re.compile(
    r"^[A-Za-z0-9._-]+-\d{8}T\d{6}Z-[0-9a-f]{8}\.(?:jsonl?)(?:\.(?:(?P<pid>\d{1,7})\.)?part)?$"
)
#: Seconds a process start time (``/proc``'s btime is whole seconds) may seem to lag.
_CLOCK_SLACK_S = 2.0
#: The ``.part`` names this process is writing now (several tools may run at once).
_writing: set[str] = set()
_writing_lock = threading.Lock()


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from ``/proc``; None when it cannot be told."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_gone(name: str, pid: int, info: os.stat_result) -> bool:
    """Whether the process that wrote the ``.part`` file ``name`` (pid ``pid``, last written at
    ``info.st_mtime``) is gone; when that cannot be told, it is not (the file is kept)."""
    if info.st_uid != os.geteuid():
        return False
    if pid == os.getpid():
        with _writing_lock:
            return name not in _writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    started = _started_at(pid)
    return started is not None and started > info.st_mtime + _CLOCK_SLACK_S


class _Capped:
    """The text stream of one new file, refusing to grow it past ``room`` bytes."""

    def __init__(self, handle: TextIO, room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, text: str) -> int:
        self._room -= len(text.encode("utf-8", "surrogatepass"))
        if self._room < 0:
            raise UsageError(
                "the file would pass the export folder's budget (B24_MCP_EXPORT_MAX_MB); it "
                "was removed",
                code="EXPORT_TOO_LARGE",
                hint="narrow the export (filter, select), or ask the operator for a larger budget",
            )
        return self._handle.write(text)

    def flush(self) -> None:
        self._handle.flush()


def _name(stem: str, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80] or "export"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{safe}-{stamp}-{secrets.token_hex(4)}{suffix}"


class ExportFolder:
    """The operator's folder for files made by tools."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def tidy(self) -> None:
        """At a server's start: remove what killed servers left and what expired. A folder that
        does not exist yet is not made here, and one that cannot be used is the first export's
        to report."""
        if self.path.is_dir():
            with contextlib.suppress(B24Error, OSError):
                self._make_room(self._ready())

    def _make_room(self, folder: Path) -> int:
        """Remove expired files, ``.part`` files whose writer is gone and, oldest first,
        finished files past the budget; returns the room left for a new file."""
        now = time.time()
        kept: list[tuple[float, int, Path]] = []
        with os.scandir(folder) as entries:
            for entry in entries:
                made = _MADE_HERE.match(entry.name)
                if not made or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                part = entry.name.endswith(".part")
                pid = made["pid"]
                orphan = pid is not None and _writer_gone(entry.name, int(pid), info)
                if orphan or now - info.st_mtime > (STALE_PART_S if part else KEEP_S):
                    Path(entry.path).unlink(missing_ok=True)
                else:
                    kept.append((-1.0 if part else info.st_mtime, info.st_size, Path(entry.path)))
        used = sum(size for _, size, _ in kept)
        for mtime, size, path in sorted(kept):
            if used <= self.max_bytes:
                break
            if mtime >= 0:  # a .part is another export in progress: its own budget
                path.unlink(missing_ok=True)
                used -= size
        return max(0, self.max_bytes - used)

    def _ready(self) -> Path:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.path.lstat()
        except OSError as exc:
            raise self._unusable(exc.strerror or type(exc).__name__) from None
        if stat.S_ISLNK(info.st_mode):
            raise self._unusable("it is a symbolic link (exports are not written through links)")
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise self._unusable("it is not a folder of this user's")
        if info.st_mode & 0o022:
            raise self._unusable("it is writable by other users")
        return self.path

    def _unusable(self, why: str) -> ConfigError:
        return ConfigError(
            f"the export folder {self.path} cannot be used: {why}",
            code="EXPORT_DIR_UNUSABLE",
            hint="the operator sets B24_MCP_EXPORT_DIR to a folder of this user's",
        )

    @contextmanager
    def _create(self, stem: str, suffix: str) -> Iterator[tuple[TextIO, Path]]:
        """A new file opened for writing; renamed to its final name only if the block ends."""
        folder = self._ready()
        room = self._make_room(folder)
        final = folder / _name(stem, suffix)
        part = final.with_name(f"{final.name}.{os.getpid()}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with _writing_lock:  # before it exists: another tool's _make_room must not take it
            _writing.add(part.name)
        try:
            try:
                handle = os.fdopen(os.open(part, flags, 0o600), "w", encoding="utf-8")
            except OSError as exc:
                raise self._unusable(exc.strerror or type(exc).__name__) from None
            try:
                with handle:
                    yield cast(TextIO, _Capped(handle, room)), final
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(part, final)
                fsync_dir(final.parent)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        finally:
            with _writing_lock:
                _writing.discard(part.name)

    def write_lines(
        self, stem: str, items: Iterable[Any], write: Callable[[TextIO, Iterable[Any]], int]
    ) -> tuple[Path, int]:
        """Stream ``items`` into a new JSONL file with ``write``; returns its path and count."""
        with self._create(stem, ".jsonl") as (handle, final):
            count = write(handle, items)
        return final, count

    def write_document(self, stem: str, text: str) -> Path:
        """Save one JSON document (already masked) in a new file."""
        with self._create(stem, ".json") as (handle, final):
            handle.write(text)
        return final
