"""The audit log: one hash-chained JSONL line per CLI call, secrets masked, rotated by size.

Who ran what, when, with which outcome, must be answerable after the fact, and the answer must be
trustworthy: each line is chained to the one before it (see ``auditchain``), so an edited, deleted
or reordered line is caught by ``verify``. Lines are appended under a file lock, so many processes
writing at once still form one chain. Param values are not logged by default (only their keys and
a digest), because CRM data is personal data; ``params_mode="full"`` logs them, secrets masked.

A line whose writer could not take the lock (its wait for a stuck holder interrupted, or timed
out) is not dropped: it is kept as a file of its own in ``AUDIT_FILE.pending/`` and the next
writer, holding the lock, appends it before its own line (in the order kept; its ``ts`` is
still when it was made, so time may step back there).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import CorruptStateError
from ..fingerprint import canonical_json, digest
from ..redact import Redactor
from ..state import JsonlWriter, file_lock, last_line, move_aside, read_json, write_json_atomic
from .auditchain import (
    GENESIS_HASH,
    chain_files,
    read_head,
    rotation_path,
    seal,
    write_head,
)
from .keyfile import load_key

if TYPE_CHECKING:
    from filelock import FileLock

    from ..settings import Settings

__all__ = [
    "DEFAULT_MAX_BYTES",
    "AuditEvent",
    "AuditLog",
    "Outcome",
    "audit_key",
    "kept_folder",
    "param_keys",
    "write_outside_a_call",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: Which host wrote a line: a fleet's hosts each keep their own chain (README "Running a fleet").
_HOST = socket.gethostname()
#: ``prev`` of a keyed line written after the head was found missing or rewritten: it follows
#: no line, so verification stops there for good.
HEAD_LOST = "head-lost"
#: A call's outcome, or a person's decision on a plan: approved / denied (b24-broker approve,
#: deny) or declined (an MCP elicitation said no, was cancelled or could not be asked).
Outcome = Literal["ok", "error", "refused", "replayed", "planned", "approved", "denied", "declined"]


@dataclass(frozen=True)
class AuditEvent:
    """What one call did; ``error`` is the error code when the outcome is error or refused."""

    request_id: str
    portal: str
    method: str
    risk: str
    outcome: Outcome
    duration_ms: float
    params: Any = None
    api: str = "v2"
    plan_id: str | None = None
    idempotency_key: str | None = None
    error: str | None = None
    exit_code: int = 0
    #: Who asked, when not the CLI itself: the MCP client and tool, or the broker's caller
    #: (uid and pid from SO_PEERCRED), e.g. ``{"via": "broker", "uid": 1001, ...}``.
    origin: Mapping[str, Any] | None = None
    #: A decision's line: the digest of the plan as the person saw it.
    plan_digest: str | None = None


def audit_key(settings: Settings) -> bytes | None:
    """The keyed chain's key (broker mode: ``B24_AUDIT_KEY_FILE``), or None for a plain
    SHA-256 chain."""
    if settings.audit_key_file is None:
        return None
    return load_key(settings.audit_key_file, setting="B24_AUDIT_KEY_FILE")


def write_outside_a_call(settings: Settings, event: AuditEvent) -> AuditLog:
    """Write ``event``, something decided outside a pipeline run (a person's decision, a call
    the broker refused before running it), to the operator's chain; returns the log written
    and lets OSError through for the caller to report."""
    log = AuditLog.of(settings, Redactor(settings.secrets()), audit_key(settings))
    log.write(event)
    return log


def param_keys(params: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf key in ``params`` (``fields.TITLE``), values left out."""
    if not isinstance(params, Mapping):
        return [prefix] if prefix else []
    keys: list[str] = []
    for key, value in params.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys.extend(param_keys(value, path) if isinstance(value, Mapping) and value else [path])
    return sorted(keys)


def _valid_text(value: Any) -> Any:
    """``value`` with every string that is not valid Unicode (a lone surrogate from refused
    params) escaped as ``\\udXXX`` text, so the line can be written as UTF-8 at all."""
    if isinstance(value, str):
        if value.isascii():
            return value
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(item) for item in value]
    return value


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _last_line_of(path: Path) -> dict[str, str] | None:
    """``prev``, ``hash`` and ``request_id`` of the last whole line of ``path`` (a torn tail
    is skipped)."""
    line = last_line(path)
    if not line:
        return None
    try:
        parsed = json.loads(line)
        return {
            "prev": str(parsed["prev"]),
            "hash": str(parsed["hash"]),
            "request_id": str(parsed.get("request_id")),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def kept_folder(log: Path) -> Path:
    """Where lines that could not take ``log``'s lock wait for the next writer."""
    return log.with_name(log.name + ".pending")


class AuditLog:
    """Appends audit lines to ``path``, chaining them and rotating the file past ``max_bytes``."""

    def __init__(
        self,
        path: Path,
        *,
        redactor: Redactor,
        max_bytes: int = DEFAULT_MAX_BYTES,
        params_mode: Literal["digest", "full"] = "digest",
        key: bytes | None = None,
    ) -> None:
        self.path = path
        self._redactor = redactor
        self._max_bytes = max_bytes
        self._params_mode = params_mode
        self._key = key

    @classmethod
    def of(cls, settings: Settings, redactor: Redactor, key: bytes | None) -> AuditLog:
        """The operator's log as ``settings`` configure it (``key``: a keyed chain's)."""
        return cls(
            Path(settings.audit_file),
            redactor=redactor,
            max_bytes=settings.audit_max_bytes,
            params_mode=settings.audit_params,  # type: ignore[arg-type]
            key=key,
        )

    def entry(self, event: AuditEvent) -> dict[str, Any]:
        """The masked line content for ``event`` (before chaining)."""
        entry: dict[str, Any] = {
            "ts": _now_iso(),
            "request_id": event.request_id,
            "host": _HOST,
            "portal": event.portal,
            "method": event.method,
            "api": event.api,
            "risk": event.risk,
            "outcome": event.outcome,
            "exit_code": event.exit_code,
            "duration_ms": round(event.duration_ms, 1),
            "plan_id": event.plan_id,
            "idempotency_key": event.idempotency_key,
            "error": event.error,
            "param_keys": param_keys(event.params),
            "params_digest": digest(event.params),
        }
        if event.origin is not None:
            entry["origin"] = dict(event.origin)
        if event.plan_digest is not None:
            entry["plan_digest"] = event.plan_digest
        if self._params_mode == "full":
            entry["params"] = event.params
        return _valid_text(self._redactor.mask_obj(entry))

    def lock(self) -> FileLock:
        """The lock every writer of this log holds while it appends."""
        return file_lock(self.path)

    def write(self, event: AuditEvent) -> dict[str, Any]:
        """Append ``event`` as one chained line and return the line as written."""
        with self.lock():
            return self.write_locked(event)

    def write_locked(self, event: AuditEvent, *, anchored: bool = True) -> dict[str, Any]:
        """``write``, for a caller that holds ``lock()``: the lines kept for want of the lock
        first, then ``event``'s. ``anchored=False`` leaves the head one line behind, for the
        caller to move with ``anchor`` while it still holds the lock (``guard/deferred.py``)."""
        self._append_kept()
        return self._append(self.entry(event), anchored=anchored)

    def anchor(self, line: Mapping[str, Any]) -> None:
        """Move the head to ``line``, written by ``write_locked(..., anchored=False)``."""
        write_head(self.path, line["hash"], self._key)

    def keep(self, event: AuditEvent) -> Path:
        """Keep ``event``'s line for the next writer (this one could not take the lock); the
        folder it waits in. OSError when it cannot be kept either."""
        entry = self.entry(event)
        folder = kept_folder(self.path)
        write_json_atomic(folder / f"{time.time_ns():020d}-{entry['request_id']}.json", entry)
        return folder

    def _append_kept(self) -> None:
        """Append the kept lines, oldest first. Each file goes once its line is on disk; a
        writer killed in between left that line last in the chain, so it is not appended
        twice. An unreadable one is moved aside for a person to read."""
        folder = kept_folder(self.path)
        try:
            names = sorted(name for name in os.listdir(folder) if name.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            path = folder / name
            try:
                entry = read_json(path)
            except CorruptStateError:
                continue
            if not isinstance(entry, dict):
                move_aside(path)
                continue
            last = self._last_line()
            if last is None or last["request_id"] != str(entry.get("request_id")):
                self._append(entry)
            path.unlink(missing_ok=True)

    def _append(self, entry: dict[str, Any], *, anchored: bool = True) -> dict[str, Any]:
        """Chain ``entry`` after the newest line and append it; the line as written.

        Order matters for crash safety: the line is on disk before the head names it, so a
        writer killed in between leaves the head one line behind, which ``verify`` accepts and
        the next writer repairs (``_last_hash``). A torn line is cut before anything else
        happens, so rotation can never carry a half line into the middle of the chain.
        """
        log = JsonlWriter(self.path)  # cuts a torn tail left by a killed writer
        try:
            line = seal(entry, self._last_hash(), self._key)
            text = canonical_json(line)
            if self._rotate_if_needed(len(text.encode("utf-8")) + 1):
                log.close()
                log = JsonlWriter(self.path)
            log.append_text(text)
        finally:
            log.close()
        if anchored:
            self.anchor(line)
        return line

    def _last_hash(self) -> str:
        """The newest hash: the head file, or the line after it when a writer died between
        appending that line and moving the head on; without a head, the newest file's last line.

        The head wins over the file otherwise, so that a line deleted from the end is still
        detected after the next append (the new line then points at a hash the file no longer
        holds).
        """
        try:
            head = read_head(self.path, self._key)
        except CorruptStateError:
            head = None
        last = self._last_line()
        if head is None:
            if last is None:
                return GENESIS_HASH
            # A keyed chain with lines always has a sound head; carrying on from the file would
            # hide a cut tail whose head was deleted. The next line marks the break for good.
            return HEAD_LOST if self._key is not None else last["hash"]
        if last is not None and last["prev"] == head:
            return last["hash"]
        return head

    def _last_line(self) -> dict[str, Any] | None:
        """The chain's newest whole line (``prev``, ``hash``), looking past an empty live file.
        The folder is listed for rotated files only then, not on every write."""
        try:
            live = _last_line_of(self.path)
        except FileNotFoundError:
            live = None
        if live is not None:
            return live
        for path in reversed(chain_files(self.path)):
            line = _last_line_of(path)
            if line is not None:
                return line
        return None

    def _rotate_if_needed(self, incoming: int) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size and size + incoming > self._max_bytes:
            os.replace(self.path, rotation_path(self.path))
            return True
        return False
