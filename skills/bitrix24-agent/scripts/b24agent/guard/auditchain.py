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

Keyed chains (broker mode): whoever can write the log can also recompute SHA-256 hashes and
rewrite the head after cutting the tail. With a key (``B24_AUDIT_KEY_FILE``, readable by the broker
only) each line says ``"keyed": true`` and its ``hash`` is an HMAC-SHA256 under that key, and the
head carries an HMAC of its hash: without the key no line can be forged and no head rewritten.
A keyed chain must have a head, so deleting it is caught too. A verifier without the key cannot
check a keyed line and says so; ``VerifyReport.keyed`` tells whether the key was used.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import B24Error, CorruptStateError, UsageError
from ..fingerprint import canonical_json, digest
from ..state import (
    file_lock,
    open_read,
    overwrite_json,
    read_json,
    write_json_atomic,
)

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
    "write_head",
]

#: ``prev`` of the very first line of a chain.
GENESIS_HASH = "0" * 64

_HEAD_SCHEMA = {
    "type": "object",
    "required": ["hash"],
    "properties": {"hash": {"type": "string"}, "mac": {"type": "string"}},
}


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), "sha256").hexdigest()


def seal(entry: dict[str, Any], prev: str, key: bytes | None = None) -> dict[str, Any]:
    """``entry`` chained after ``prev``: adds ``prev`` and its own ``hash`` (computed last);
    with ``key`` the line is marked keyed and its hash is an HMAC under the key."""
    line = {k: v for k, v in entry.items() if k not in ("prev", "hash", "keyed")}
    if key is not None:
        line["keyed"] = True
    line["prev"] = prev
    line["hash"] = _mac(key, canonical_json(line)) if key is not None else digest(line)
    return line


def head_path(log: Path) -> Path:
    """Where the newest hash of ``log``'s chain is anchored."""
    return log.with_name(log.name + ".head")


def _head_mac(key: bytes, newest: str) -> str:
    return _mac(key, "head:" + newest)


def write_head(log: Path, newest: str, key: bytes | None = None) -> None:
    """Anchor ``newest`` as the chain's end; with ``key``, MACed so only the key holder can.

    Called under the log's lock, after the line is on disk. The head has the same length every
    time, so after the first write it is overwritten in place and fdatasync'd (one sector:
    ``state.overwrite_json``), not replaced through a fsynced temp file, a rename and a fsync
    of the folder: it is on disk before the call returns either way, at a third of the cost.
    """
    head = {"hash": newest}
    if key is not None:
        head["mac"] = _head_mac(key, newest)
    if not overwrite_json(head_path(log), head):
        write_json_atomic(head_path(log), head)


def read_head(log: Path, key: bytes | None = None) -> str | None:
    """The anchored newest hash, or None when there is no head file (CorruptStateError if bad;
    with ``key``, also when its MAC does not match: someone without the key rewrote it)."""
    path = head_path(log)
    head = read_json(path, default=None, schema=_HEAD_SCHEMA)
    if head is None:
        return None
    if key is not None and not hmac.compare_digest(
        str(head.get("mac", "")), _head_mac(key, head["hash"])
    ):
        raise CorruptStateError(path, None, "its MAC does not match the audit key (rewritten)")
    return head["hash"]


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
    """Outcome of ``verify``; ``anchored`` says whether a head file confirmed the chain's end,
    ``keyed`` whether every line and the head were checked with the audit key."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    anchored: bool = False
    #: Lines after the head: 1 when a writer died between appending a line and moving the head.
    unanchored: int = 0
    keyed: bool = False
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
            "keyed": self.keyed,
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


def _check_line(raw: bytes, expected_prev: str, key: bytes | None) -> tuple[str | None, str]:
    """Return ``(problem, hash)`` for one raw line; ``problem`` is None when the line is sound."""
    try:
        line = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not valid JSON (line damaged or truncated)", expected_prev
    if not isinstance(line, dict) or not all(
        isinstance(line.get(k), str) for k in ("prev", "hash")
    ):
        return "missing its prev/hash fields", expected_prev
    keyed = line.get("keyed") is True
    if keyed and key is None:
        return (
            "the line is keyed (broker mode) and no audit key was given: only the key's holder "
            "can verify it (B24_AUDIT_KEY_FILE, or --verify-audit through the broker)",
            expected_prev,
        )
    if key is not None and not keyed:
        return "the line is not keyed, in a chain verified with the audit key", expected_prev
    if not hmac.compare_digest(seal(line, line["prev"], key)["hash"], line["hash"]):
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
    with open_read(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if live and not raw.endswith(b"\n"):
                return  # only the last line can lack its newline
            yield number, raw.rstrip(b"\n")


def verify(log: Path, key: bytes | None = None) -> VerifyReport:
    """Recompute ``log``'s whole chain across rotated files and name the first broken line.

    What a killed writer leaves is not an alarm: a torn last line (see ``_whole_lines``), or a
    head one line behind the chain when the writer died between appending the line and moving
    the head (``unanchored`` then says 1; the next write moves the head on). With ``key``, the
    chain is checked as keyed: every line keyed, the head present and MACed.
    """
    report = VerifyReport(keyed=key is not None)
    files = chain_files(log)
    report.files = [str(path) for path in files]
    expected, before_last = GENESIS_HASH, None
    for path in files:
        for number, raw in _whole_lines(path, live=path == log):
            before_last = expected
            problem, expected = _check_line(raw, expected, key)
            if problem:
                report.broken = BrokenLine(str(path), number, problem)
                return report
            report.lines += 1
    try:
        head = _read_head_locked(log, key)
    except CorruptStateError as exc:
        moved = f", moved aside to {exc.moved_to}" if exc.moved_to else ""
        report.broken = BrokenLine(
            str(exc.path), 0, f"the head file is corrupt ({exc.reason}){moved}"
        )
        return report
    report.anchored = head is not None
    if head is None and key is not None and report.lines:
        last = report.files[-1]
        report.broken = BrokenLine(last, 0, "the keyed chain's head file is missing (deleted)")
        return report
    if head is not None and head != expected:
        if head == before_last:
            report.unanchored = 1
            return report
        last = report.files[-1] if report.files else str(log)
        reason = "the chain ends before the newest recorded line (lines or files were removed)"
        report.broken = BrokenLine(last, 0, reason)
    return report


def _read_head_locked(log: Path, key: bytes | None) -> str | None:
    """``read_head`` under the log's lock, as writers read it: they overwrite the head in place,
    and a reader without the lock could catch a write half done. A log whose lock cannot be
    taken (a read-only archive, a writer stuck for a minute) is read as it is."""
    if not head_path(log).exists():
        return None  # nothing to wait for, and no lock file to leave behind
    lock = file_lock(log)
    try:
        lock.acquire()
    except OSError:  # filelock's Timeout is one too
        return read_head(log, key)
    try:
        return read_head(log, key)
    finally:
        lock.release()


class AuditChainError(B24Error):
    """``--verify-audit`` found the chain broken. Exit 1, "verification failed": the check ran
    and the answer is no (as ``cmp`` or ``sha256sum -c`` do), not a usage or config problem."""

    exit_code = 1


def check(log: Path, key: bytes | None = None) -> VerifyReport:
    """``verify`` for the CLI: the report when the chain holds, else AuditChainError naming the
    first broken line; a log that does not exist at all is a usage error (exit 2)."""
    if not chain_files(log) and not head_path(log).exists():
        raise UsageError(
            f"no audit log at {log}",
            code="AUDIT_LOG_MISSING",
            hint="give the log's path (default: B24_AUDIT_FILE)",
        )
    report = verify(log, key)
    if report.broken is not None:
        raise AuditChainError(
            f"audit log chain broken at {report.broken.describe()}",
            code="AUDIT_CHAIN_BROKEN",
            hint="lines from there on cannot be trusted; keep the file for investigation",
            details=report.to_json(),
        )
    return report
