"""The sandbox portal's data: one SQLite database holding CRM records, tasks, users, messages,
event bindings and the offline event queue. All SQL of the domain lives here.

The HTTP server is threaded, so the store owns a single connection guarded by a re-entrant lock,
and every handler runs its changes inside ``transaction()``: one commit per call, nothing
half-written when a handler fails midway, and exact counts when hundreds of threads write at once.
Records (CRM entities, tasks, users) are a JSON document per row next to an indexed integer ID,
so one table serves both views Bitrix24 offers of the same data (``crm.lead.*`` and
``crm.item.*``) and any field can be filtered through ``json_extract``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import fixtures
from .errors import argument_error
from .filters import json_field
from .jsonout import RenderCache

__all__ = ["OFFLINE_LIFETIME_S", "RECORD_TABLES", "Query", "Store"]

#: Tables holding ``(id, data JSON)`` records.
RECORD_TABLES = frozenset({"crm_lead", "crm_deal", "crm_contact", "crm_company", "tasks", "users"})

#: Reserved offline rows nobody cleared are purged after 30 days (offline-events.md).
OFFLINE_LIFETIME_S = 30 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crm_lead (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS crm_deal (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS crm_contact (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS crm_company (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dialog_id TEXT NOT NULL,
    author_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    system TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    event TEXT NOT NULL,
    handler TEXT NOT NULL,
    connector TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    created REAL NOT NULL,
    UNIQUE (app, event, handler, connector, user_id)
);
CREATE TABLE IF NOT EXISTS offline_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp_x REAL NOT NULL,
    event_name TEXT NOT NULL,
    event_data TEXT NOT NULL,
    event_additional TEXT NOT NULL,
    message_id TEXT NOT NULL,
    app TEXT NOT NULL,
    connector TEXT NOT NULL,
    process_id TEXT NOT NULL DEFAULT '',
    error INTEGER NOT NULL DEFAULT 0,
    UNIQUE (app, connector, message_id, process_id)
);
CREATE INDEX IF NOT EXISTS ix_offline_free ON offline_events (connector, process_id, error);
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL, id INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id)
);
"""

#: Tables emptied on reset besides the records; ``docs`` holds docstore's JSON documents.
_SERVICE_TABLES = ("counters", "messages", "bindings", "offline_events", "docs")

#: CRM fields the client's idempotency reconciles through get an index of their own.
_INDEXED_JSON = ("ORIGIN_ID", "ORIGINATOR_ID")
_CRM_TABLES = ("crm_lead", "crm_deal", "crm_contact", "crm_company")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _table(name: str) -> str:
    if name not in RECORD_TABLES:
        raise ValueError(f"not a record table: {name}")
    return name


@dataclass(frozen=True)
class Query:
    """Which records of a table a list call reads: those matching ``where`` (SQL from
    ``filters``, with its ``params``) in ``order`` (id breaks ties), ``limit`` of them from
    ``offset`` (None: all); ``count``: also count every match (start=-1 skips counting)."""

    where: str = "1"
    params: Sequence[Any] = ()
    order: Sequence[str] = ()
    offset: int = 0
    limit: int | None = 50
    count: bool = True


class Store:
    """Thread-safe SQLite store. ``db_path`` None keeps everything in memory."""

    def __init__(self, db_path: str | None = None) -> None:
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            db_path or ":memory:", check_same_thread=False, isolation_level=None
        )
        self._depth = 0
        #: Rendered default views of rows, see ``render``.
        self.renders = RenderCache()
        self._after_commit: list[Callable[[], None]] = []
        if db_path:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        with self.transaction() as conn:
            # executescript would commit on its own; statements go one by one instead.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table in _CRM_TABLES:
                for field in _INDEXED_JSON:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS ix_{table}_{field.lower()} "
                        f"ON {table} ({json_field(field)})"
                    )
            if not conn.execute("SELECT 1 FROM users LIMIT 1").fetchone():
                self._insert_users(conn)

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block as one transaction; nested blocks join the outermost one.

        Callbacks registered with ``on_commit`` run after the outermost commit, outside the
        lock, and are dropped on rollback: online event deliveries must never announce a change
        that did not happen.
        """
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                    self._after_commit.clear()
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")
                callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction commits (at once outside one)."""
        with self._lock:
            if self._depth:
                self._after_commit.append(callback)
                return
        callback()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- records ----------------------------------------------------------------------------

    def insert(self, table: str, data: dict[str, Any]) -> int:
        """Store a new record and return its id (ids are never reused, as in Bitrix24)."""
        body = {k: v for k, v in data.items() if k != "ID"}
        with self.transaction() as conn:
            cursor = conn.execute(f"INSERT INTO {_table(table)} (data) VALUES (?)", (_dumps(body),))
            return int(cursor.lastrowid or 0)

    def get(self, table: str, record_id: int) -> dict[str, Any] | None:
        """The record with ``"ID"`` set, or None."""
        rows = self._rows(f"SELECT id, data FROM {_table(table)} WHERE id = ?", (record_id,))
        return _record(rows[0]) if rows else None

    def put(self, table: str, record_id: int, data: dict[str, Any]) -> bool:
        """Replace a record's document; False if it does not exist."""
        body = {k: v for k, v in data.items() if k != "ID"}
        with self.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE {_table(table)} SET data = ? WHERE id = ?", (_dumps(body), record_id)
            )
            return cursor.rowcount > 0

    def delete(self, table: str, record_id: int) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(f"DELETE FROM {_table(table)} WHERE id = ?", (record_id,))
            return cursor.rowcount > 0

    def select(self, table: str, query: Query) -> tuple[list[dict[str, Any]], int]:
        """The records ``query`` picks, and the total match count when it counts."""
        rows, total = self.select_stored(table, query)
        return [_record(row) for row in rows], total

    def select_stored(self, table: str, query: Query) -> tuple[list[tuple[int, str]], int]:
        """``select`` as stored, ``(id, JSON text)`` pairs: a caller that renders through
        ``renders`` only decodes the rows it has not rendered yet."""
        where, order = query.where, query.order
        name = _table(table)
        terms = [*order, "id ASC"] if not any(t.startswith("id ") for t in order) else list(order)
        sql = f"SELECT id, data FROM {name} WHERE {where} ORDER BY {', '.join(terms)}"
        values = list(query.params)
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            values += [query.limit, query.offset]
        with self._lock:
            rows = self._conn.execute(sql, values).fetchall()
            total = 0
            if query.count:
                counted = self._conn.execute(
                    f"SELECT COUNT(*) FROM {name} WHERE {where}", query.params
                )
                total = int(counted.fetchone()[0])
        return rows, total

    def render(
        self, table: str, row: tuple[int, str], view: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """A stored row as ``view`` shows it, from ``renders`` while the row is unchanged.
        ``view`` must be the same for every caller of one table (the list methods' default)."""
        return self.renders.row(table, row[0], row[1], lambda: view(_record(row)))

    def count(self, table: str) -> int:
        return int(self._rows(f"SELECT COUNT(*) FROM {_table(table)}")[0][0])

    def count_kind(self, kind: str) -> int:
        """Rows of a ``seed`` kind (``crm.lead``, ``event.offline``); ValueError if unknown."""
        if kind == "event.offline":
            return int(self._rows("SELECT COUNT(*) FROM offline_events")[0][0])
        if kind not in fixtures.SEED_KINDS:
            raise ValueError(f"unknown kind: {kind!r}")
        return self.count(fixtures.SEED_KINDS[kind][0])

    def next_value(self, counter: str) -> int:
        """The next number of a named sequence (e.g. multi-field value ids)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (counter,),
            )
            return int(
                conn.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()[0]
            )

    # --- messages ---------------------------------------------------------------------------

    def add_message(self, dialog_id: str, author_id: int, text: str, system: bool) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO messages (dialog_id, author_id, text, system, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (dialog_id, author_id, text, "Y" if system else "N", time.time()),
            )
            return int(cursor.lastrowid or 0)

    def messages(self, dialog_id: str | None = None) -> list[dict[str, Any]]:
        """Stored messages, oldest first (for tests and the admin surface)."""
        sql = "SELECT id, dialog_id, author_id, text, system, created FROM messages"
        rows = self._rows(
            sql + (" WHERE dialog_id = ?" if dialog_id else "") + " ORDER BY id",
            (dialog_id,) if dialog_id else (),
        )
        keys = ("id", "dialog_id", "author_id", "text", "system", "created")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # --- event bindings ---------------------------------------------------------------------

    def add_binding(
        self, app: str, event: str, handler: str, connector: str, user_id: int
    ) -> int | None:
        """Register a handler; None when the same one exists (``Handler already binded``)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO bindings (app, event, handler, connector, user_id, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (app, event, handler, connector, user_id, time.time()),
            )
            return int(cursor.lastrowid) if cursor.rowcount else None

    def delete_bindings(
        self,
        app: str,
        event: str,
        handler: str,
        connector: str | None = None,
        user_id: int | None = None,
    ) -> int:
        """Remove matching handlers; ``connector``/``user_id`` None match any. Returns count."""
        sql = "DELETE FROM bindings WHERE app = ? AND event = ? AND handler = ?"
        params: list[Any] = [app, event, handler]
        if connector is not None:
            sql += " AND connector = ?"
            params.append(connector)
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def bindings(
        self, app: str | None = None, event: str | None = None, user_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Registered handlers, oldest first, optionally for one app, event or user."""
        sql = "SELECT id, app, event, handler, connector, user_id FROM bindings WHERE 1"
        params: list[Any] = []
        for column, value in (("app", app), ("event", event), ("user_id", user_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        keys = ("id", "app", "event", "handler", "connector", "user_id")
        return [
            dict(zip(keys, row, strict=True)) for row in self._rows(sql + " ORDER BY id", params)
        ]

    # --- offline event queue ----------------------------------------------------------------
    # A queue belongs to (app, connector). Rows seeded by the admin surface carry app "" and
    # belong to every app, so a worker test needs no binding before it can drain a big queue.

    _SCOPE = "app IN (?, '') AND connector = ?"

    def queue_offline(
        self,
        app: str,
        connector: str,
        name: str,
        data: Any,
        additional: Any,
        message_id: str,
    ) -> None:
        """Queue an event, merging into the unreserved row with the same MESSAGE_ID: the queue
        keeps the latest state of an object, not its history (offline-events.md)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO offline_events (timestamp_x, event_name, event_data, "
                "event_additional, message_id, app, connector) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app, connector, message_id, process_id) DO UPDATE SET "
                "timestamp_x = excluded.timestamp_x, event_data = excluded.event_data, "
                "event_additional = excluded.event_additional",
                (time.time(), name, _dumps(data), _dumps(additional), message_id, app, connector),
            )

    def offline_reserve(
        self,
        app: str,
        connector: str,
        where: str,
        params: Sequence[Any],
        order: Sequence[str],
        limit: int,
        error: bool,
    ) -> str:
        """Mark up to ``limit`` free rows with a new random 32-character process id and return
        it. Under the store lock, so parallel callers always get disjoint sets."""
        process_id = secrets.token_hex(16)
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM offline_events WHERE process_id <> '' AND timestamp_x < ?",
                (time.time() - OFFLINE_LIFETIME_S,),
            )
            ids = conn.execute(
                f"SELECT id FROM offline_events WHERE {self._SCOPE} AND process_id = '' "
                f"AND error = ? AND ({where}) ORDER BY {', '.join([*order, 'id ASC'])} LIMIT ?",
                [app, connector, int(error), *params, limit],
            ).fetchall()
            conn.executemany(
                "UPDATE offline_events SET process_id = ? WHERE id = ?",
                [(process_id, row[0]) for row in ids],
            )
        return process_id

    def offline_reserved(
        self,
        app: str,
        connector: str,
        process_id: str,
        error: bool,
        where: str,
        params: Sequence[Any],
        order: Sequence[str],
        limit: int,
    ) -> list[dict[str, Any]]:
        """Rows reserved by ``process_id`` (only the caller that knows it ever sees them)."""
        rows = self._rows(
            f"SELECT {_OFFLINE_COLUMNS} FROM offline_events WHERE {self._SCOPE} "
            f"AND process_id = ? AND error = ? AND ({where}) "
            f"ORDER BY {', '.join([*order, 'id ASC'])} LIMIT ?",
            [app, connector, process_id, int(error), *params, limit],
        )
        return [_offline_row(row) for row in rows]

    def offline_clear(
        self,
        app: str,
        connector: str,
        process_id: str,
        ids: Iterable[int] | None = None,
        message_ids: Iterable[str] | None = None,
    ) -> int:
        """Delete rows reserved by ``process_id`` (all of them, or those ids / MESSAGE_IDs)."""
        sql = f"DELETE FROM offline_events WHERE {self._SCOPE} AND process_id = ?"
        params: list[Any] = [app, connector, process_id]
        for column, values in (("id", ids), ("message_id", message_ids)):
            if values is not None:
                chosen = list(values)
                sql += f" AND {column} IN ({', '.join('?' for _ in chosen) or 'NULL'})"
                params += chosen
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def offline_mark_error(
        self, app: str, connector: str, process_id: str, message_ids: Iterable[str]
    ) -> int:
        """Flag the process's rows with these MESSAGE_IDs ERROR=1 and release them.

        Other unflagged copies of the same messages (free, or held by another process) are
        dropped, as the vendor's ``markError`` does, so one error row stands for the object.
        """
        chosen = list(message_ids)
        if not chosen:
            return 0
        marks = ", ".join("?" for _ in chosen)
        scope = f"{self._SCOPE} AND message_id IN ({marks})"
        base = [app, connector, *chosen]
        with self.transaction() as conn:
            conn.execute(
                f"DELETE FROM offline_events WHERE {scope} AND error = 0 AND process_id <> ?",
                [*base, process_id],
            )
            conn.execute(
                f"DELETE FROM offline_events WHERE {scope} AND error = 1 AND process_id = '' "
                f"AND message_id IN (SELECT message_id FROM offline_events WHERE {scope} "
                "AND process_id = ?)",
                [*base, *base, process_id],
            )
            return conn.execute(
                f"UPDATE offline_events SET error = 1, process_id = '' WHERE {scope} "
                "AND process_id = ?",
                [*base, process_id],
            ).rowcount

    def offline_select(
        self,
        app: str,
        connector: str,
        where: str,
        params: Sequence[Any],
        order: Sequence[str],
        offset: int,
        limit: int,
        count: bool,
    ) -> tuple[list[dict[str, Any]], int]:
        """Read the queue without reserving anything (``event.offline.list``)."""
        base = f"FROM offline_events WHERE {self._SCOPE} AND ({where})"
        values = [app, connector, *params]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_OFFLINE_COLUMNS} {base} ORDER BY {', '.join([*order, 'id ASC'])} "
                "LIMIT ? OFFSET ?",
                [*values, limit, offset],
            ).fetchall()
            total = (
                int(self._conn.execute(f"SELECT COUNT(*) {base}", values).fetchone()[0])
                if count
                else 0
            )
        return [_offline_row(row) for row in rows], total

    # --- admin: reset and seed --------------------------------------------------------------

    def reset(self) -> None:
        """Empty every table and restore the seeded users."""
        self.renders.clear()
        with self.transaction() as conn:
            for table in (*RECORD_TABLES, *_SERVICE_TABLES):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("DELETE FROM sqlite_sequence")
            self._insert_users(conn)

    def seed(self, counts: dict[str, int]) -> dict[str, int]:
        """Bulk-insert generated rows, e.g. ``{"crm.lead": 100000}``, without raising events.

        Kinds are ``fixtures.SEED_KINDS`` plus ``event.offline`` (N distinct queued rows for
        every app). Returns the number of rows created per kind; an unknown kind or a negative
        count is refused (ERROR_ARGUMENT) before anything is written.
        """
        unknown = sorted(set(counts) - {*fixtures.SEED_KINDS, "event.offline"})
        if unknown:
            raise argument_error(f"unknown seed kinds: {', '.join(unknown)}", "seed")
        if any(n < 0 for n in counts.values()):
            raise argument_error("seed counts must not be negative", "seed")
        created: dict[str, int] = {}
        with self.transaction() as conn:
            for kind, n in counts.items():
                if kind == "event.offline":
                    self._seed_offline(conn, n)
                else:
                    table, factory = fixtures.SEED_KINDS[kind]
                    start = int(
                        conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
                    )
                    users = [row[0] for row in conn.execute("SELECT id FROM users")]
                    conn.executemany(
                        f"INSERT INTO {table} (data) VALUES (?)",
                        ((_dumps(factory(start + i, users)),) for i in range(1, n + 1)),
                    )
                    view = fixtures.LIST_VIEWS.get(table)
                    if view is not None:
                        # Rendered now, so a benchmark's first export does not pay for it.
                        seeded = conn.execute(
                            f"SELECT id, data FROM {table} WHERE id > ?", (start,)
                        )
                        for row in seeded:
                            self.render(table, row, view)
                created[kind] = n
        return created

    def _seed_offline(self, conn: sqlite3.Connection, n: int) -> None:
        start = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM offline_events").fetchone()[0])
        now = time.time()
        rows = []
        for i in range(start + 1, start + n + 1):
            name, data, message_id = fixtures.offline_event(i)
            rows.append((now, name, _dumps(data), _dumps({"user_id": 1}), message_id))
        conn.executemany(
            "INSERT OR IGNORE INTO offline_events (timestamp_x, event_name, event_data, "
            "event_additional, message_id, app, connector) VALUES (?, ?, ?, ?, ?, '', '')",
            rows,
        )

    @staticmethod
    def _insert_users(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO users (id, data) VALUES (?, ?)",
            [
                (user["ID"], _dumps({k: v for k, v in user.items() if k != "ID"}))
                for user in fixtures.USERS
            ],
        )


_OFFLINE_COLUMNS = (
    "id, timestamp_x, event_name, event_data, event_additional, message_id, process_id, error"
)


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = json.loads(row[1])
    record["ID"] = int(row[0])
    return record


def _offline_row(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = (
        "ID",
        "TIMESTAMP_X",
        "EVENT_NAME",
        "EVENT_DATA",
        "EVENT_ADDITIONAL",
        "MESSAGE_ID",
        "PROCESS_ID",
        "ERROR",
    )
    values = dict(zip(keys, row, strict=True))
    values["EVENT_DATA"] = json.loads(values["EVENT_DATA"])
    values["EVENT_ADDITIONAL"] = json.loads(values["EVENT_ADDITIONAL"])
    return values
