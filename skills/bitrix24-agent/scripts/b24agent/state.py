"""Atomic JSON state files under filelock: the one way this project writes state.

Every state change (tokens, limiter bucket, plans, idempotency records, worker checkpoints) goes
through here so that a crash, a kill -9 or two racing processes can never leave a file half-written
or lose an update: lock, read, change, write a temp file, fsync, rename, fsync the folder.
A file that does not parse (or fails its schema) is moved aside and reported with its path, never
silently replaced by an empty default, because that would quietly drop tokens or reservations.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from filelock import FileLock
from jsonschema.validators import validator_for

__all__ = [
    "CorruptStateError",
    "StateBox",
    "create_exclusive",
    "file_lock",
    "fsync_dir",
    "locked_json",
    "move_aside",
    "read_json",
    "write_json_atomic",
]

LOCK_TIMEOUT_S = 60.0


class CorruptStateError(ValueError):
    """A state file exists but cannot be trusted; it has been moved aside to ``moved_to``."""

    def __init__(self, path: Path, moved_to: Path | None, reason: str) -> None:
        self.path = path
        self.moved_to = moved_to
        self.reason = reason
        where = f"; moved aside to {moved_to}" if moved_to else ""
        super().__init__(f"state file {path} is corrupt ({reason}){where}")


def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The cross-process lock guarding ``path`` (a sibling ``.lock`` file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout, mode=0o600)


def fsync_dir(folder: Path) -> None:
    """Make a rename or create in ``folder`` durable (the entry itself, not just the data)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, data: Any, mode: int) -> Path:
    """Write ``data`` as JSON to a fsynced temp file next to ``path`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return Path(tmp_name)


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one."""
    tmp = _write_temp(path, data, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: Any, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist yet; return whether we won.

    The content is complete before the name appears (hard link of a fsynced temp file), so a
    racing reader never sees an empty record and exactly one of N racing creators wins.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def move_aside(path: Path) -> Path | None:
    """Rename an untrustworthy state file out of the way (kept for inspection, never deleted)."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target


#: Validators by schema identity: the schemas are shared constants (``load_schema`` caches),
#: and building a validator costs 0.5 ms. Each entry keeps its schema, so the id stays unique.
_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _validate(data: Any, schema: Mapping[str, Any]) -> None:
    """``jsonschema.validate`` without its check of the schema itself, which costs 3 ms per read
    (most of a warm ``b24 user.current``); the schemas are ours, and tests/test_state_schemas.py
    checks each one against its metaschema instead."""
    known = _VALIDATORS.get(id(schema))
    if known is None or known[0] is not schema:
        known = _VALIDATORS[id(schema)] = (schema, validator_for(schema)(schema))
    known[1].validate(data)


def read_json(path: Path, *, default: Any = None, schema: Mapping[str, Any] | None = None) -> Any:
    """Read a JSON state file: ``default`` when absent, CorruptStateError when untrustworthy."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return default
    try:
        data = json.loads(raw.decode("utf-8"))
        if schema is not None:
            _validate(data, schema)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStateError(path, move_aside(path), f"not valid JSON: {exc}") from None
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        reason = f"unexpected shape at {where}: {exc.message}"
        raise CorruptStateError(path, move_aside(path), reason) from None
    return data


@dataclass
class StateBox:
    """The state read under the lock; assign ``data`` (or mutate it) to have it written back."""

    data: Any
    path: Path
    discard: bool = False


@contextlib.contextmanager
def locked_json(
    path: Path,
    *,
    default: Any,
    schema: Mapping[str, Any] | None = None,
    mode: int = 0o600,
    timeout: float = LOCK_TIMEOUT_S,
) -> Iterator[StateBox]:
    """Lock ``path``, yield its content, and write it back atomically if it changed.

    Nothing is written when the block raises or sets ``box.discard``; the lock is held throughout,
    so read-modify-write cycles from many processes serialise instead of losing updates.
    """
    with file_lock(path, timeout):
        current = read_json(path, default=default, schema=schema)
        before = json.dumps(current, sort_keys=True)
        box = StateBox(data=current, path=path)
        yield box
        if not box.discard and json.dumps(box.data, sort_keys=True) != before:
            write_json_atomic(path, box.data, mode=mode)
