"""The ``file`` state backend (the default): state in files under the state folder, shared by the
processes of one machine through file locks and atomic writes (state.py).

Every path is the one the consumer has always used, so switching nothing changes nothing. The
file lock that guards the token store is held while refreshing, so it is the single-flight
"lease" on one machine; the kernel drops it when its holder dies. Worker leases are local: one
worker per state folder (worker/lock.py), adoption takes every reservation it does not know.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .. import state
from ..errors import ConfigError
from .base import Change, Expiry, Schema, Selector, Step, never, succeeds
from .bucket import BucketModel, DictBucket, FileStore

__all__ = ["FileBackend", "FileDocuments", "FileTokens", "LocalLeases", "spend_with_room"]

T = TypeVar("T")
#: Bytes reserved beyond the current token record for its successor (two tokens, two hashes).
RESERVE_MARGIN = 4096
#: The marker of a folder's last sweep (its age throttles sweeps).
_SWEPT = ".swept"
_MISSING = object()


class FileTokens:
    """One JSON file (0600); a refresh holds its file lock from re-read to write.

    Room for the new pair is reserved on disk before the refresh token is spent
    (``state.Reservation``): a full disk refuses the refresh while the old refresh token still
    works, instead of spending it and losing its successor. If the store still cannot be
    replaced, the new pair stays in ``<store>.pending`` and the next reader takes it over.
    """

    def __init__(self, path: Path, schema: Mapping[str, Any]) -> None:
        self.path = path
        self._schema = schema

    def read(self) -> dict[str, Any] | None:
        return state.read_json(self.path, default=None, schema=self._schema)

    def update(self, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        with state.locked_json(self.path, default=None, schema=self._schema) as box:
            box.data = change(self._take_pending(box.data))
        return box.data

    def stamp(self) -> object:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return _MISSING

    @contextlib.contextmanager
    def hold(self) -> Iterator[FileTokens]:
        with state.file_lock(self.path):
            yield self

    # --- under hold() ---------------------------------------------------------------------

    def held(self) -> dict[str, Any] | None:
        return self._take_pending(self.read())

    def rotate(
        self, stored: dict[str, Any], successor: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Nobody else writes under the lock, so the successor always replaces ``stored``."""
        room, record = spend_with_room(self.path, stored, successor)
        try:
            room.commit(record)
        except OSError as exc:
            raise self._unsaved(room, exc) from None
        return record, True

    def _take_pending(self, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        """Under the store's lock: the pair a refresh saved only in the pending file (the store
        could not be replaced then), if it is the successor of ``stored``; else ``stored``."""
        pending = state.Reservation.leftover(self.path, schema=self._schema)
        if pending is None:
            return stored
        if succeeds(pending, stored):
            state.Reservation.adopt(self.path)
            return pending
        state.Reservation.discard(self.path)  # from before the store was reseeded
        return stored

    def _unsaved(self, room: state.Reservation, exc: OSError) -> ConfigError:
        reason = exc.strerror or type(exc).__name__
        if room.durable:
            return ConfigError(
                f"the token store {self.path} could not be replaced ({reason}); the refreshed "
                f"tokens are kept in {room.pending}",
                code="TOKEN_STORE_PENDING",
                hint="fix B24_STATE_DIR (space, permissions) and repeat the call: the next call "
                "takes the tokens over from that file; do not delete it",
            )
        return ConfigError(
            f"the refresh token was spent, but the new tokens could not be saved ({reason})",
            code="TOKEN_STORE_LOST",
            hint="authorise the app again and set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN",
        )


def spend_with_room(
    path: Path, stored: dict[str, Any], successor: Callable[[], dict[str, Any]]
) -> tuple[state.Reservation, dict[str, Any]]:
    """Reserve room on disk at ``path`` for the successor of ``stored``, then call ``successor``
    (it spends the refresh token): the room to commit the new record to, and that record. A
    full disk is found while the refresh token still works (TOKEN_STORE_UNWRITABLE)."""
    # The new record differs from the old one by two tokens and two spent hashes.
    size = len(json.dumps(stored)) + RESERVE_MARGIN
    try:
        room = state.Reservation(path, size)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the token store {path}: {exc.strerror or exc}; the access token "
            "expired, and the refresh token was not used",
            code="TOKEN_STORE_UNWRITABLE",
            hint="free disk space (or fix the permissions) in B24_STATE_DIR and repeat the "
            "call: the stored refresh token still works",
        ) from None
    try:
        return room, successor()
    except BaseException:
        room.release()
        raise


class FileDocuments:
    """One JSON file per document in ``folder``; decisions under the folder's one lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _lock(self) -> Any:
        """One lock per folder: decisions are short and local, so contention stays low."""
        return state.file_lock(self.folder / ".records")

    def create(self, name: str, doc: Any, *, expires_at: float | None = None) -> bool:
        return state.create_exclusive(self.folder / name, doc)

    def read(self, name: str, schema: Mapping[str, Any] | None = None) -> Any:
        return state.read_json(self.folder / name, schema=schema)

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return [path.name for path in self.folder.iterdir()]

    def usage(self) -> int:
        """The regular files' sizes (links and other kinds are not documents of ours)."""
        if not self.folder.is_dir():
            return 0
        used = 0
        with os.scandir(self.folder) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # removed while we looked
                    if entry.is_file(follow_symlinks=False):
                        used += entry.stat(follow_symlinks=False).st_size
        return used

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        state.fsync_dir(self.folder)

    def transact(
        self, name: str, step: Step[T], *, schema: Schema | None = None, expires_at: Expiry = never
    ) -> T:
        path = self.folder / name
        with self._lock():
            decision, result = step(state.read_json(path, schema=schema))
            if decision is Change.DELETE:
                path.unlink(missing_ok=True)
            elif decision is not Change.KEEP:
                state.write_json_atomic(path, decision)
        return result

    def sweep(self, select: Selector, *, every: float = 0.0, schema: Schema | None = None) -> int:
        """Remove what ``select`` picks; with ``every``, at most once per that many seconds (a
        marker's age keeps this from reading the folder on every call) and under the folder lock,
        since such a sweep reads records others decide on. A sweep by age alone takes no lock."""
        if not self.folder.is_dir():
            return 0
        if not every:
            return self._remove(select, schema)
        marker = self.folder / _SWEPT
        try:
            if marker.stat().st_mtime > time.time() - every:
                return 0
        except FileNotFoundError:
            pass
        with self._lock():
            marker.touch()
            return self._remove(select, schema)

    def _remove(self, select: Selector, schema: Schema | None) -> int:
        removed = 0
        for path in self.folder.iterdir():
            try:
                modified = path.stat().st_mtime
                if select(path.name, modified, lambda p=path: state.read_json(p, schema=schema)):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class LocalLeases:
    """One host: the worker lock already makes this worker the only one on its state folder."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def valid(self) -> bool:
        return True

    def claim(self, process_id: str) -> bool:
        return True


class FileBackend:
    """State in files on this machine (see the module docstring)."""

    name = "file"

    def bucket(
        self, *, interval: float, tolerance: float, path: Path, schema: Mapping[str, Any]
    ) -> DictBucket:
        return DictBucket(FileStore(path, schema), BucketModel(interval, tolerance))

    def tokens(self, name: str, *, path: Path, schema: Mapping[str, Any]) -> FileTokens:
        return FileTokens(path, schema)

    def documents(self, namespace: str, *, folder: Path) -> FileDocuments:
        return FileDocuments(folder)

    def worker_leases(self, queue: str, worker: str, *, lease_s: float) -> LocalLeases:
        return LocalLeases()

    def describe(self) -> str:
        return "file"
