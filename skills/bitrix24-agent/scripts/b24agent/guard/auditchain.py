"""The audit log's hash chain: sealing a line, the files of one chain, and verifying it.

Each line carries ``prev`` (the hash of the line before it, across rotated files) and ``hash``
(SHA-256 of its own canonical JSON without ``hash``). Editing a line breaks its own hash;
deleting, inserting or reordering lines breaks the next line's ``prev``. Deleting the last lines
leaves a valid chain, so the writer also keeps a head file (``<log>.head``) holding the newest
hash: verification compares the chain's end against it. The line is written before the head, so
a writer killed in between leaves the head exactly one line behind: accepted (the line after the
head chains onto it) and repaired by the next write, never reported as tampering.

Files of one chain: rotated files ``<log>.000001``, ``<log>.000002``, ... (oldest first) and then
the live ``<log>``. Rotation renames the live file; the next line's ``prev`` is still the last
hash of the rotated one, so the chain runs on across files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import B24Error, CorruptStateError, UsageError
from ..fingerprint import digest
from ..state import read_json

__all__ = [
    "GENESIS_HASH",
    "AuditChainError",
    "BrokenLine",
    "VerifyReport",
    "chain_files",
    "check",
    "head_path",
    "read_head",
    "rotation_path",
    "seal",
    "verify",
]

#: ``prev`` of the very first line of a chain.
GENESIS_HASH = "0" * 64

_HEAD_SCHEMA = {
    "type": "object",
    "required": ["hash"],
    "properties": {"hash": {"type": "string"}},
}


def seal(entry: dict[str, Any], prev: str) -> dict[str, Any]:
    """``entry`` chained after ``prev``: adds ``prev`` and its own ``hash`` (computed last)."""
    line = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
    line["prev"] = prev
    line["hash"] = digest(line)
    return line


def head_path(log: Path) -> Path:
    """Where the newest hash of ``log``'s chain is anchored."""
    return log.with_name(log.name + ".head")


def read_head(log: Path) -> str | None:
    """The anchored newest hash, or None when there is no head file (CorruptStateError if bad)."""
    head = read_json(head_path(log), default=None, schema=_HEAD_SCHEMA)
    return head["hash"] if head else None


def _rotation_seq(log: Path, candidate: Path) -> int | None:
    suffix = candidate.name[len(log.name) + 1 :]
    return int(suffix) if suffix.isdigit() else None


def _rotated(log: Path) -> list[tuple[int, Path]]:
    if not log.parent.is_dir():
        return []
    found = []
    for candidate in log.parent.glob(log.name + ".*"):
        seq = _rotation_seq(log, candidate)
        if seq is not None:
            found.append((seq, candidate))
    return sorted(found)


def chain_files(log: Path) -> list[Path]:
    """Every file of ``log``'s chain, oldest first (rotated files, then the live file)."""
    files = [path for _, path in _rotated(log)]
    if log.exists():
        files.append(log)
    return files


def rotation_path(log: Path) -> Path:
    """The name the live file takes when it is rotated: one past the newest rotated file."""
    rotated = _rotated(log)
    seq = rotated[-1][0] + 1 if rotated else 1
    return log.with_name(f"{log.name}.{seq:06d}")


@dataclass(frozen=True)
class BrokenLine:
    """Where verification stopped: ``file`` and 1-based ``line`` (0 = the end of the chain)."""

    file: str
    line: int
    reason: str

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"end of {self.file}"
        return f"{where}: {self.reason}"


@dataclass
class VerifyReport:
    """Outcome of ``verify``; ``anchored`` says whether a head file confirmed the chain's end."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    anchored: bool = False
    #: Lines after the head: 1 when a writer died between appending a line and moving the head.
    unanchored: int = 0
    broken: BrokenLine | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "ok": self.ok,
            "files": self.files,
            "lines": self.lines,
            "anchored": self.anchored,
        }
        if self.unanchored:
            report["unanchored"] = self.unanchored
        if self.broken:
            report["broken"] = {
                "file": self.broken.file,
                "line": self.broken.line,
                "reason": self.broken.reason,
            }
        return report


def _check_line(raw: bytes, expected_prev: str) -> tuple[str | None, str]:
    """Return ``(problem, hash)`` for one raw line; ``problem`` is None when the line is sound."""
    try:
        line = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not valid JSON (line damaged or truncated)", expected_prev
    if not isinstance(line, dict) or not all(
        isinstance(line.get(k), str) for k in ("prev", "hash")
    ):
        return "missing its prev/hash fields", expected_prev
    if seal(line, line["prev"])["hash"] != line["hash"]:
        return "content does not match its hash (the line was edited)", expected_prev
    if line["prev"] != expected_prev:
        return (
            "does not follow the line before it (a line was deleted, inserted or reordered here)",
            line["hash"],
        )
    return None, line["hash"]


def _whole_lines(path: Path, *, live: bool) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of one chain file. The live file's last line without its newline is a
    torn tail (a writer killed mid-append, never acknowledged, cut by the next writer): left
    out, so it is no alarm. Anywhere else a line without a newline is checked like any other."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if live and not raw.endswith(b"\n"):
                return  # only the last line can lack its newline
            yield number, raw.rstrip(b"\n")


def verify(log: Path) -> VerifyReport:
    """Recompute ``log``'s whole chain across rotated files and name the first broken line.

    What a killed writer leaves is not an alarm: a torn last line (see ``_whole_lines``), or a
    head one line behind the chain when the writer died between appending the line and moving
    the head (``unanchored`` then says 1; the next write moves the head on).
    """
    report = VerifyReport()
    files = chain_files(log)
    report.files = [str(path) for path in files]
    expected, before_last = GENESIS_HASH, None
    for path in files:
        for number, raw in _whole_lines(path, live=path == log):
            before_last = expected
            problem, expected = _check_line(raw, expected)
            if problem:
                report.broken = BrokenLine(str(path), number, problem)
                return report
            report.lines += 1
    try:
        head = read_head(log)
    except CorruptStateError as exc:
        moved = f", moved aside to {exc.moved_to}" if exc.moved_to else ""
        report.broken = BrokenLine(str(exc.path), 0, f"the head file is corrupt{moved}")
        return report
    report.anchored = head is not None
    if head is not None and head != expected:
        if head == before_last:
            report.unanchored = 1
            return report
        last = report.files[-1] if report.files else str(log)
        reason = "the chain ends before the newest recorded line (lines or files were removed)"
        report.broken = BrokenLine(last, 0, reason)
    return report


class AuditChainError(B24Error):
    """``--verify-audit`` found the chain broken. Exit 1, "verification failed": the check ran
    and the answer is no (as ``cmp`` or ``sha256sum -c`` do), not a usage or config problem."""

    exit_code = 1


def check(log: Path) -> VerifyReport:
    """``verify`` for the CLI: the report when the chain holds, else AuditChainError naming the
    first broken line; a log that does not exist at all is a usage error (exit 2)."""
    if not chain_files(log) and not head_path(log).exists():
        raise UsageError(
            f"no audit log at {log}",
            code="AUDIT_LOG_MISSING",
            hint="give the log's path (default: B24_AUDIT_FILE)",
        )
    report = verify(log)
    if report.broken is not None:
        raise AuditChainError(
            f"audit log chain broken at {report.broken.describe()}",
            code="AUDIT_CHAIN_BROKEN",
            hint="lines from there on cannot be trusted; keep the file for investigation",
            details=report.to_json(),
        )
    return report
