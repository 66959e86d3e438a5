"""Atomic JSON state files under filelock: the one way this project writes state.

Every state change (tokens, limiter bucket, plans, idempotency records, worker checkpoints) goes
through here so that a crash, a kill -9 or two racing processes can never leave a file half-written
or lose an update: lock, read, change, write a temp file, fsync, rename, fsync the folder. The two
files rewritten on every call (the audit head, the limiter's bucket) are overwritten in place
instead, where one write is all or nothing (``overwrite_json``).
A file that does not parse (or fails its schema) is moved aside and reported with its path, never
silently replaced by an empty default, because that would quietly drop tokens or reservations.

Every state file is opened through the local boundary (boundary.py): folders this user owns
below folders nobody else can swap, files never followed through a link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jsonschema
from filelock import FileLock
from jsonschema.validators import validator_for

from .boundary import check_folder, check_state_file, make_folder, open_state_file
from .errors import CorruptStateError

__all__ = [
    "JsonlWriter",
    "Reservation",
    "StateBox",
    "check_folder",
    "check_state_file",
    "complete_length",
    "create_exclusive",
    "file_lock",
    "fsync_dir",
    "last_line",
    "locked_json",
    "move_aside",
    "open_read",
    "overwrite_json",
    "read_json",
    "read_jsonl",
    "write_json_atomic",
]

LOCK_TIMEOUT_S = 60.0
#: Writes of at most these sizes are all or nothing: a disk sector even in a power cut, a page
#: of the page cache for a killed process (``overwrite_json``).
_SECTOR = 512
_PAGE = 4096
#: How much of a JSON Lines file's end is read at a time when looking for its last line.
_TAIL_CHUNK = 64 * 1024


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write every byte of ``data`` to ``fd`` (appended, or from ``offset``), or raise OSError.

    Near a full disk (or at RLIMIT_FSIZE) one write puts down what fits and returns a short
    count; the error comes only with the next write. A caller taking one write as the whole
    record would count a cut record as stored.
    """
    written = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    if written == len(data):
        return
    rest = memoryview(data)[written:]
    while rest:
        if offset is not None:
            offset += written
        written = os.write(fd, rest) if offset is None else os.pwrite(fd, rest, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        rest = rest[written:]


def open_read(path: Path) -> BinaryIO:
    """A state file opened for reading (FileNotFoundError when absent)."""
    return os.fdopen(open_state_file(path, os.O_RDONLY), "rb")


def _read_bytes(path: Path) -> bytes:
    with open_read(path) as handle:
        return handle.read()


def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The cross-process lock guarding ``path`` (a sibling ``.lock`` file; filelock opens it
    without following a link)."""
    make_folder(path.parent)
    return FileLock(str(path) + ".lock", timeout=timeout, mode=0o600)


def fsync_dir(folder: Path) -> None:
    """Make a rename or create in ``folder`` durable (the entry itself, not just the data)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, data: Any, mode: int, durable: bool = True) -> Path:
    """Write ``data`` as JSON to a temp file next to ``path`` (fsynced when ``durable``) and
    return its path."""
    make_folder(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # dumps, not dump: dump streams through the pure-Python encoder, 10x slower on a
            # worker checkpoint of 1,000 rows.
            handle.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise _naming(exc, path) from None
    return Path(tmp_name)


def _naming(exc: BaseException, path: Path) -> BaseException:
    """``exc``, naming ``path`` if it is an OSError that names no file (a failed write or
    fsync does not), so the error says which file to fix; never its content."""
    if isinstance(exc, OSError) and exc.filename is None:
        return OSError(exc.errno, exc.strerror, str(path))
    return exc


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one.

    ``durable=False`` skips both fsyncs, for state whose loss in a power cut costs nothing
    (the rate limiter's model: after a reboot its moments are in the past anyway). Readers
    still never see a half-written file; a power cut may leave the old one, or on some file
    systems an empty one, which the reader reports as corrupt once and then starts afresh.
    """
    tmp = _write_temp(path, data, mode, durable)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def overwrite_json(path: Path, data: Any, *, durable: bool = True) -> bool:
    """Rewrite a small state file in place: one write at offset 0, padded with spaces (which
    JSON ignores) to the old length, so nothing of the old content survives and nothing needs
    cutting. False, with nothing written, when the file is absent or too big for that: the
    caller then uses ``write_json_atomic``.

    Why: a rename costs a new inode, a folder update and (durable) three journal commits. On a
    disk busy with other work the audit head's rename took 14 ms where this takes 4, and the
    head and the limiter are written on every call. Only for files whose every reader and
    writer holds the file's lock (a reader without it could catch a write half done), and only
    while the write is all or nothing: a killed process cannot tear one write within a page;
    with ``durable``, the content must also fit in one disk sector without growing the file,
    because a sector is written whole even in a power cut and the unchanged size needs no
    journal (``fdatasync``), so the file holds the old content or the new, never a mix. A
    write refused part-way (a copy-on-write disk out of room) puts the old content back and
    raises.
    """
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        fd = open_state_file(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        room = size if durable else _PAGE
        if size > (_SECTOR if durable else _PAGE) or len(blob) > room:
            return False
        before = os.pread(fd, size, 0)
        try:
            _write_all(fd, blob.ljust(size, b" "), 0)
            if durable:
                os.fdatasync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # all or nothing: the old content goes back
                _write_all(fd, before, 0)
            raise
    finally:
        os.close(fd)
    return True


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
        raw = _read_bytes(path)
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


# Reserved writes: state that must be writable after an irreversible step.


class Reservation:
    """Room on disk for one later atomic replace of ``path``, taken *before* an irreversible
    step whose result must not be lost (spending a single-use OAuth refresh token).

    The room is allocated in ``<path>.pending`` (a fixed name, so the next reader finds it), so
    writing the result cannot fail for want of space: a full disk is found while giving up is
    still free. If replacing ``path`` fails anyway, the result stays durable in ``pending``
    (``durable`` says so) and ``leftover`` / ``adopt`` let the next reader take it over. A crash
    before ``commit`` leaves zeros there, which ``leftover`` recognises and removes. On a
    copy-on-write filesystem an overwrite may still need new blocks; ``durable`` and the pending
    file cover that case too.
    """

    def __init__(self, path: Path, size: int, *, mode: int = 0o600) -> None:
        self.path = path
        self.pending = self.pending_path(path)
        self.durable = False
        make_folder(path.parent)
        self._fd = open_state_file(self.pending, os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
        self._size = size
        try:
            _allocate(self._fd, size)
        except BaseException:
            self.release()
            raise

    @staticmethod
    def pending_path(path: Path) -> Path:
        return path.with_name(path.name + ".pending")

    def commit(self, data: Any) -> None:
        """Write ``data`` into the reserved room, then put it in place of ``path``."""
        blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            if len(blob) > self._size:
                os.ftruncate(self._fd, len(blob))  # past the reservation: may still fit
            _write_all(self._fd, blob, 0)
            os.ftruncate(self._fd, len(blob))
            os.fsync(self._fd)
        except BaseException:
            # Never put in place: a cut record in ``pending`` is removed by ``leftover``.
            os.close(self._fd)
            self._fd = -1
            raise
        self.durable = True
        os.close(self._fd)
        self._fd = -1
        os.replace(self.pending, self.path)
        fsync_dir(self.path.parent)

    def release(self) -> None:
        """Give the room back (the irreversible step did not happen)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.pending)

    @classmethod
    def leftover(cls, path: Path, *, schema: Mapping[str, Any] | None = None) -> Any:
        """What a committed-but-not-replaced write left for ``path``, or None. A pending file
        that is not a whole valid record (a reservation never committed) is removed."""
        try:
            return read_json(cls.pending_path(path), default=None, schema=schema)
        except CorruptStateError as exc:
            with contextlib.suppress(OSError):
                os.unlink(exc.moved_to or cls.pending_path(path))
            return None

    @classmethod
    def adopt(cls, path: Path) -> None:
        """Put the pending record in place of ``path`` (a rename: needs no free space)."""
        os.replace(cls.pending_path(path), path)
        fsync_dir(path.parent)

    @classmethod
    def discard(cls, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cls.pending_path(path))


def _allocate(fd: int, size: int) -> None:
    """Make ``size`` bytes of ``fd`` really taken on disk (ENOSPC now, not at the write)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.pwrite(fd, bytes(size), 0)  # a filesystem without fallocate: write the room
    os.fsync(fd)


# JSON Lines: append-only logs (audit log, worker journal, DLQ, sink).


class JsonlWriter:
    """An append-only JSONL file kept open; ``append`` returns once the line is on disk."""

    def __init__(self, path: Path, *, mode: int = 0o600) -> None:
        self.path = path
        make_folder(path.parent)
        created = not os.path.lexists(path)
        self._fd = open_state_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
        #: A failed append whose undo failed too: (its start, the file's length it left).
        self._torn: tuple[int, int] | None = None
        if created:
            fsync_dir(path.parent)
        with self._alone():
            _drop_torn_tail(self._fd)

    def append(self, record: Any, *, sync: bool = True) -> None:
        """Write ``record`` as one line; with ``sync`` (default) fsync before returning.

        Without ``sync`` the line survives the process being killed (it is in the page cache)
        but not a power cut until ``sync()``; callers use that only for records whose loss can
        cause a repeat, never a loss.
        """
        self.append_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")), sync=sync)

    def append_text(self, line: str, *, sync: bool = True) -> None:
        """Write one already-encoded JSON line (the audit chain hashes its exact bytes).

        All or nothing: when the disk refuses part of the line (full, or a file size limit) or
        the fsync fails, the file is cut back to its length before and fsynced, then the error
        raised, so no caller counts a cut line as written and the next line starts on its own.
        The append, its fsync and any undo run under ``_alone``, so the cut never takes a line
        another process appended to the same file (two workers sharing one --sink).
        """
        with self._alone():
            if self._torn is not None:  # an earlier failed append could not be undone then
                self._undo()
            before = os.lseek(self._fd, 0, os.SEEK_END)  # the length (O_APPEND writes there)
            try:
                _write_all(self._fd, (line + "\n").encode("utf-8"))
                if sync:
                    os.fsync(self._fd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    self._torn = (before, os.fstat(self._fd).st_size)
                    self._undo()
                raise _naming(exc, self.path) from None

    def _undo(self) -> None:
        """Cut the failed append ``_torn`` off and fsync. Deferred (its first try failed), the
        cut is made only if the file still ends where that append left it: lines appended
        since by another process lie past it, and cutting would take them too."""
        assert self._torn is not None
        start, left = self._torn
        if os.fstat(self._fd).st_size == left:
            os.ftruncate(self._fd, start)
            self._torn = (start, start)
        os.fsync(self._fd)
        self._torn = None

    @contextlib.contextmanager
    def _alone(self) -> Iterator[None]:
        """Hold this file against other writers (flock, advisory: our own JsonlWriters) while
        one line is appended, fsynced and maybe undone. Those hold it that briefly, so wait at
        most LOCK_TIMEOUT_S (polling: a blocking flock could wait for ever), then raise."""
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(errno.EAGAIN, "held by another writer", str(self.path)) from None
                time.sleep(0.002)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

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


def _drop_torn_tail(fd: int) -> None:
    """Cut a partial last line left by a crash, so the next record starts on a line of its own
    (that partial record was never acknowledged to anyone, so nothing is lost)."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        complete = complete_length(handle)
    if complete < end:
        os.ftruncate(fd, complete)
        os.fsync(fd)


def complete_length(handle: BinaryIO) -> int:
    """How many bytes of an append-only file are whole lines: where a torn last line (a crash
    in the middle of an append) begins. Reads only the tail: a log may hold millions of lines."""
    end = handle.seek(0, os.SEEK_END)
    position = end
    while position > 0:
        step = min(_TAIL_CHUNK, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step)
        if position + step == end and chunk.endswith(b"\n"):
            return end
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return position + cut + 1
    return 0


def last_line(path: Path) -> bytes | None:
    """The last whole line of ``path`` (without its newline), skipping a torn tail; None when
    the file holds no whole line. The one tail reader: the audit chain and the worker use it."""
    with open_read(path) as handle:
        end = complete_length(handle)
        position, tail = end - 1, b""  # tail: the bytes read so far, before the final newline
        while position > 0:
            step = min(_TAIL_CHUNK, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                return tail[cut + 1 :]
        return tail if end > 0 else None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of ``path`` (none when absent). A torn last line is skipped; any other line
    that is not a JSON object raises CorruptStateError naming the file and line."""
    try:
        raw = _read_bytes(path)
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
            raise CorruptStateError(path, None, f"not JSON: {exc}", at=f"line {number}") from None
        if not isinstance(record, dict):
            raise CorruptStateError(path, None, "not a JSON object", at=f"line {number}")
        yield record
