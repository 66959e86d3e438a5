"""Files b24-mcp writes for the agent: full exports (JSONL) and answers too big to return.

They go only to the operator's folder (``B24_MCP_EXPORT_DIR``, default ``STATE/exports``); the
agent picks no path, so a tool call cannot overwrite a file elsewhere. The folder is created
0700; each file is created new (never following a symlink), 0600, written under a ``.part``
name and renamed when complete, so a file with the final name is always whole.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..state import fsync_dir

__all__ = ["ExportFolder"]


def _name(stem: str, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80] or "export"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{safe}-{stamp}-{secrets.token_hex(4)}{suffix}"


class ExportFolder:
    """The operator's folder for files made by tools."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        final = self._ready() / _name(stem, suffix)
        part = final.with_name(final.name + ".part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            handle = os.fdopen(os.open(part, flags, 0o600), "w", encoding="utf-8")
        except OSError as exc:
            raise self._unusable(exc.strerror or type(exc).__name__) from None
        try:
            with handle:
                yield handle, final
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, final)
            fsync_dir(final.parent)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

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
