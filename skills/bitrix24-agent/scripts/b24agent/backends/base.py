"""What every state backend offers: the shapes the limiter, the token store, idempotency records,
plans and the offline worker rely on, with no word about where the state lives.

Each store is named by its consumer (``namespace``) and, for the file backend, given the path it
has always used, so a single-machine user's files stay where they were. Every operation is one
atomic step on the shared state; failures of the store itself surface as B24Error (an
unreachable shared store is a TransientError, exit 6), never as a silent local fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = [
    "Backend",
    "BucketState",
    "Change",
    "Documents",
    "Expiry",
    "Schema",
    "Selector",
    "Slot",
    "Step",
    "TokenHold",
    "TokenStore",
    "WorkerLeases",
    "digest_of",
    "succeeds",
]

T = TypeVar("T")

#: A JSON schema a stored document is checked against as it is read.
Schema = Mapping[str, Any]
#: A ``Documents.transact`` step: the stored document (None: none) -> (decision, result).
Step = Callable[[Any], tuple[Any, T]]
#: When the document a ``transact`` step stores expires (epoch seconds; None: never).
Expiry = Callable[[Any], float | None]
#: A ``Documents.sweep`` choice: (name, modified_at, load) -> whether to remove the document.
Selector = Callable[[str, float, Callable[[], Any]], bool]


def never(doc: Any) -> float | None:
    """The default ``Expiry``: documents stay until a step deletes them."""
    return None


def digest_of(token: str) -> str:
    """How the token store remembers a spent token (sha256 hex), never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def succeeds(kept: dict[str, Any], stored: dict[str, Any] | None) -> bool:
    """Whether ``kept``, a pair a refresh had to keep aside because the store would not take it,
    was refreshed from ``stored`` and so replaces it. A kept pair from before the store was
    reseeded (the app authorised again), or one already stored, does not."""
    return stored is None or digest_of(stored["refresh_token"]) in kept["spent"]


@dataclass(frozen=True)
class Slot:
    """One step of the limiter. ``held``: (operating, reset_at) of a method over its soft budget,
    in which case no request slot was reserved; else ``wait`` seconds until the reserved slot.
    ``watched``: the method keys with a booked operating time (worth updating on every answer)."""

    wait: float
    held: tuple[float, float] | None
    watched: frozenset[str]


class BucketState(Protocol):
    """The portal's request bucket and per-method operating budgets, shared by every caller."""

    def reserve(self, key: str | None, now: float) -> Slot: ...
    def fill(self, now: float) -> None: ...
    def book(self, key: str, operating: float, reset_at: float | None, now: float) -> None: ...


class TokenHold(Protocol):
    """The right to refresh the token pair, held by one caller at a time across the fleet."""

    def held(self) -> dict[str, Any] | None:
        """The stored pair, as the holder must judge it (a successor left pending included)."""
        ...

    def rotate(
        self, stored: dict[str, Any], successor: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Make sure a successor can be kept, then call ``successor`` (it spends the refresh
        token) and store its record in place of ``stored``. Returns (the pair to use, whether
        it is ours): a holder whose lease lapsed while a newer pair was stored gets that one."""
        ...


class TokenStore(Protocol):
    """One OAuth app's token pair."""

    def read(self) -> dict[str, Any] | None: ...
    def update(self, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Apply ``change`` atomically and return what is stored afterwards."""
        ...

    def stamp(self) -> object:
        """Cheap marker that differs once the stored pair changed (None: always re-read)."""
        ...

    def hold(self) -> AbstractContextManager[TokenHold]: ...


class Change:
    """What a ``Documents.transact`` step decided: keep the document, put a new one, delete it."""

    KEEP: Any = object()
    DELETE: Any = object()


class Documents(Protocol):
    """JSON documents of one consumer (plans, idempotency records), addressed by name."""

    def create(self, name: str, doc: Any, *, expires_at: float | None = None) -> bool:
        """Store ``doc`` under ``name`` only if no document has that name; whether we won."""
        ...

    def read(self, name: str, schema: Mapping[str, Any] | None = None) -> Any: ...
    def exists(self, name: str) -> bool: ...
    def delete(self, name: str) -> None: ...
    def names(self) -> list[str]:
        """The names of the documents stored now (in no particular order)."""
        ...

    def usage(self) -> int:
        """Bytes the documents stored now take, as stored: what a budget counts."""
        ...

    def transact(
        self, name: str, step: Step[T], *, schema: Schema | None = None, expires_at: Expiry = never
    ) -> T:
        """Read ``name``, let ``step`` decide (new doc, Change.KEEP or Change.DELETE; result),
        and apply the decision atomically: concurrent steps on one name never interleave."""
        ...

    def sweep(self, select: Selector, *, every: float = 0.0, schema: Schema | None = None) -> int:
        """Remove the documents ``select(name, modified_at, load)`` picks (``load`` reads one
        against ``schema``), at most once per ``every`` seconds; returns how many. Stores whose
        documents expire by themselves remove nothing here."""
        ...


class WorkerLeases(Protocol):
    """Which offline worker owns which portal reservation, when workers run on several hosts."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def valid(self) -> bool:
        """Whether this worker may still act on its reservations (its lease has not lapsed)."""
        ...

    def claim(self, process_id: str) -> bool:
        """Own ``process_id`` if nobody live does; True when it is ours (now or already).
        Ownership outlives the reservation by a while and then expires by itself."""
        ...


class Backend(Protocol):
    """A place for shared state: ``file`` (this machine) or ``redis`` (a fleet)."""

    name: str

    def bucket(
        self, *, interval: float, tolerance: float, path: Path, schema: Mapping[str, Any]
    ) -> BucketState: ...

    def tokens(self, name: str, *, path: Path, schema: Mapping[str, Any]) -> TokenStore: ...

    def documents(self, namespace: str, *, folder: Path) -> Documents: ...

    def worker_leases(self, queue: str, worker: str, *, lease_s: float) -> WorkerLeases: ...

    def describe(self) -> str: ...
