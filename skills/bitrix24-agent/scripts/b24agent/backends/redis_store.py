"""``B24_STATE_BACKEND=redis://...``: the state of a fleet (several hosts, one portal) in Redis.

Every step is atomic on the server: the limiter's bucket and method budgets are Lua scripts
(redis_scripts.py, the same semantics as bucket.DictBucket) run on Redis's clock, so hosts with
skewed clocks share one bucket; documents are created with SET NX and changed in WATCH/MULTI
transactions; the token store's refresh runs under a lease whose fencing token the write
checks, so a holder whose lease lapsed cannot overwrite a newer pair. Keys live under
``b24:<portal>:``. Redis being unreachable, or refusing writes for now (OOM, READONLY after a
failover), is a StoreUnavailableError (exit 6, not resent by the portal retry loop; after a write
was sent the pipeline makes it exit 7); there is no fall back to per-host files, which would
split the fleet's state silently. A key holding what we cannot read (another type, a non-number) is
STATE_CORRUPT (exit 4) naming the key: retrying would never help.

Redis must keep its data (``appendonly yes``): the token pair lives only here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from jsonschema import ValidationError as SchemaError
from jsonschema.validators import validator_for

from .. import state
from ..errors import ConfigError, StoreUnavailableError, TransientError
from . import redis_scripts as scripts
from .base import Change, Expiry, Schema, Selector, Slot, Step, never, succeeds
from .bucket import (
    FORGET_AFTER_S,
    MAX_BACKLOG_S,
    OPERATING_BUDGET_S,
    OPERATING_SOFT_SHARE,
    UNKNOWN_RESET_S,
)
from .file import spend_with_room

__all__ = ["RedisBackend"]

T = TypeVar("T")
log = logging.getLogger("b24agent.backends")

#: How long a token refresh may hold its lease (the token server call is capped at 30 s).
TOKEN_LEASE_S = 60.0
TOKEN_WAIT_S = 90.0
POLL_S = 0.05
#: Who owns a worker reservation is remembered this long (the portal purges rows after 30 days).
OWNER_KEEP_S = 30 * 86400
TRANSACTION_TRIES = 50


def _unreachable(url: str, exc: Exception) -> TransientError:
    # Not "nothing was sent": a store lost after a write was sent is settled by the caller
    # (guard/pipeline.py makes it "outcome unknown"); this layer cannot know.
    return StoreUnavailableError(
        f"the shared state store {url} is unreachable ({type(exc).__name__})",
        code="STATE_BACKEND_UNREACHABLE",
        hint="retry once Redis is back; B24_STATE_BACKEND names it",
    )


def _corrupt(where: str, what: str) -> ConfigError:
    """Damaged shared state, named by its key and never shown (it may hold tokens): retrying
    cannot help, deleting the key can."""
    return ConfigError(
        f"the shared state {where} {what}",
        code="STATE_CORRUPT",
        hint="delete that key in Redis; it is rebuilt (tokens: from the environment)",
    )


def _damaged(exc: redis.ResponseError) -> bool:
    """Whether Redis refused because of what a key holds: the wrong type (WRONGTYPE), a number
    that is not one, or one of our scripts failing in Lua, which happens only on values it
    cannot read (its arguments are always well-formed).

    Judged by the error's first word, never by "user_script" anywhere in the text: Redis adds
    "script: ..., on @user_script:N" to every error raised inside a script, a full Redis (OOM)
    or a replica after a failover (READONLY) included, and those are transient. redis-py turns
    the codes it knows (OOM, READONLY, LOADING, NOSCRIPT, MASTERDOWN, CLUSTERDOWN, TRYAGAIN...)
    into subclasses and cuts the word off, so only a plain ResponseError can be damage; BUSY,
    MISCONF and NOREPLICAS stay plain ResponseErrors and are transient too."""
    if type(exc) is not redis.ResponseError:
        return False
    text = str(exc).removeprefix("ERR ")  # redis-py cuts "ERR" off; be sure
    return text.startswith(("WRONGTYPE ", "user_script:", "value is not an integer"))


class _Guard:
    """Maps redis-py's errors to ours: unreachable or busy is transient, refused is config, a
    key of ours holding what we cannot read is corrupt state (naming ``keys``)."""

    def __init__(self, url: str, keys: tuple[str, ...]) -> None:
        self.url = url
        self.keys = keys

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, redis.AuthenticationError) or (
            isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc).upper()
        ):
            raise ConfigError(
                f"the shared state store {self.url} refused our credentials",
                code="STATE_BACKEND_AUTH",
                hint="check the password in B24_STATE_BACKEND",
            ) from None
        if isinstance(exc, redis.ResponseError) and _damaged(exc):
            named = " or ".join(self.keys) or f"under {self.url}"
            raise _corrupt(f"key {named}", "holds a value of the wrong type or shape") from None
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
            raise _unreachable(self.url, exc) from None
        if isinstance(exc, redis.RedisError):
            raise StoreUnavailableError(
                f"the shared state store {self.url} failed: {type(exc).__name__}",
                code="STATE_BACKEND_ERROR",
                hint="retry; if it persists, check the Redis server's log",
            ) from None


def _validate(data: Any, schema: Mapping[str, Any] | None, where: str) -> Any:
    if schema is not None:
        try:
            validator_for(schema)(schema).validate(data)
        except SchemaError as exc:
            raise _corrupt(where, f"has an unexpected shape: {exc.message}") from None
    return data


def _loads(raw: str | None, schema: Mapping[str, Any] | None, where: str) -> Any:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise _corrupt(where, "is not JSON") from None
    return _validate(data, schema, where)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class _Keys:
    """A Redis client and a key prefix, plus the error mapping every call goes through."""

    def __init__(self, client: redis.Redis, prefix: str, url: str) -> None:
        self.client = client
        self.prefix = prefix
        self.url = url

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def guard(self, *keys: str) -> _Guard:
        """The error mapping for a step on ``keys`` (named if they turn out corrupt)."""
        return _Guard(self.url, keys)


class RedisBucket:
    """The limiter's state as two keys and three scripts (see bucket.DictBucket)."""

    def __init__(self, keys: _Keys, interval: float, tolerance: float) -> None:
        self._keys = keys
        self._tat = keys.key("limiter", "tat")
        self._methods = keys.key("limiter", "methods")
        self._reserve = keys.client.register_script(scripts.RESERVE)
        self._fill = keys.client.register_script(scripts.FILL)
        self._book = keys.client.register_script(scripts.BOOK)
        self._model = (interval, tolerance)

    def reserve(self, key: str | None, now: float) -> Slot:
        interval, tolerance = self._model
        soft = OPERATING_BUDGET_S * OPERATING_SOFT_SHARE
        args = [interval, tolerance, MAX_BACKLOG_S, soft, FORGET_AFTER_S, key or ""]
        with self._keys.guard(self._tat, self._methods):
            kind, value, watched = self._reserve(keys=[self._tat, self._methods], args=args)
        names = frozenset(_text(name) for name in watched)
        if _text(kind) == "held":
            operating, reset_at = _text(value).split(" ")
            return Slot(0.0, (float(operating), float(reset_at)), names)
        return Slot(max(0.0, float(_text(value))), None, names)

    def fill(self, now: float) -> None:
        interval, tolerance = self._model
        with self._keys.guard(self._tat):
            self._fill(keys=[self._tat], args=[interval, tolerance, MAX_BACKLOG_S])

    def book(self, key: str, operating: float, reset_at: float | None, now: float) -> None:
        args = [key, operating, "" if reset_at is None else reset_at, UNKNOWN_RESET_S]
        with self._keys.guard(self._methods):
            self._book(keys=[self._methods], args=args)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisTokens:
    """One OAuth app's pair: a JSON document, the fencing counter, the refresh lease, and the
    fence the stored pair was written under.

    A refresh whose new pair Redis would not take (full, read-only after a failover, gone) keeps
    it in ``<token path>.unsaved`` on this host (0600, room reserved before the refresh token
    is spent, as the file backend does); every process on this host that reads the pair puts it
    into Redis first. Until one does, the other hosts hold a spent pair.
    """

    def __init__(self, keys: _Keys, name: str, schema: Mapping[str, Any], path: Path) -> None:
        self._keys = keys
        self._schema = schema
        self.unsaved = path.with_name(path.name + ".unsaved")
        self._doc = keys.key("tokens", name)
        self._fence = keys.key("tokens", name, "fence")
        self._lease = keys.key("tokens", name, "lease")
        self._written = keys.key("tokens", name, "written")
        self._acquire = keys.client.register_script(scripts.LEASE_ACQUIRE)
        self._release = keys.client.register_script(scripts.LEASE_RELEASE)
        self._replace = keys.client.register_script(scripts.TOKENS_REPLACE)

    def read(self) -> dict[str, Any] | None:
        if self.unsaved.exists():
            return self.update(lambda stored: stored)
        with self._keys.guard(self._doc):
            raw = self._keys.client.get(self._doc)
        return _loads(raw, self._schema, self._doc)

    def update(self, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        kept = state.read_json(self.unsaved, default=None, schema=self._schema)

        def step(current: Any) -> tuple[Any, dict[str, Any]]:
            new = change(kept if kept is not None and succeeds(kept, current) else current)
            return (Change.KEEP if new == current else new), new

        stored = _transact(self._keys, self._doc, step, self._schema, lambda doc: None)
        if kept is not None:
            self.unsaved.unlink(missing_ok=True)  # in Redis now, or older than what is there
        return stored

    def stamp(self) -> object:
        return object()  # one GET per call is what a stamp would cost too

    @contextlib.contextmanager
    def hold(self) -> Iterator[RedisTokenHold]:
        deadline = time.monotonic() + TOKEN_WAIT_S
        while True:
            with self._keys.guard(self._lease, self._fence):
                fence = int(
                    self._acquire(keys=[self._lease, self._fence], args=[int(TOKEN_LEASE_S * 1000)])
                )
            if fence:
                break
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    "another host has been refreshing the OAuth tokens for too long",
                    code="TOKEN_STORE_BUSY",
                    hint="retry; the lease lapses by itself if its holder died",
                )
            time.sleep(POLL_S)
        try:
            yield RedisTokenHold(self, fence)
        finally:
            with contextlib.suppress(TransientError, ConfigError), self._keys.guard(self._lease):
                self._release(keys=[self._lease], args=[fence])

    def replace(self, fence: int, expected_access: str, record: dict[str, Any]) -> bool:
        """Store ``record`` in place of the pair whose access token was ``expected_access``,
        unless a holder with a newer fence wrote (False)."""
        with self._keys.guard(self._doc, self._written):
            return bool(
                self._replace(
                    keys=[self._doc, self._written],
                    args=[fence, expected_access, _dumps(record)],
                )
            )


class RedisTokenHold:
    """The refresh lease with its fencing token."""

    def __init__(self, tokens: RedisTokens, fence: int) -> None:
        self._tokens = tokens
        self.fence = fence

    def held(self) -> dict[str, Any] | None:
        return self._tokens.read()

    def rotate(
        self, stored: dict[str, Any], successor: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Redis took a write a moment ago (the lease script's INCR and SET), and room for the
        successor is reserved on this host; once the refresh token is spent, the successor is
        stored in Redis or kept in ``unsaved``, never dropped."""
        room, record = spend_with_room(self._tokens.unsaved, stored, successor)
        try:
            ours = self._tokens.replace(self.fence, stored["access_token"], record)
        except (TransientError, ConfigError) as exc:
            raise self._kept(room, record, exc) from None
        room.release()
        if ours:
            return record, True
        newer = self._tokens.read()
        return (newer if newer is not None else record), False

    def _kept(self, room: state.Reservation, record: dict[str, Any], exc: Exception) -> Exception:
        """The error of a refresh whose new pair Redis did not take (``exc``): kept on this host
        if the disk allows, else lost (the refresh token is spent either way)."""
        why = getattr(exc, "message", type(exc).__name__)
        try:
            room.commit(record)
        except OSError as failure:
            if not room.durable:
                return ConfigError(
                    f"the refresh token was spent, but neither Redis ({why}) nor this host "
                    f"({failure.strerror or type(failure).__name__}) kept the new tokens",
                    code="TOKEN_STORE_LOST",
                    hint="authorise the app again and set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN",
                )
        where = room.path if room.path.exists() else room.pending
        return StoreUnavailableError(
            f"Redis did not take the refreshed OAuth tokens ({why}); they are kept in {where} "
            "on this host, and other hosts cannot call the portal until they are in Redis",
            code="TOKEN_STORE_PENDING",
            hint="make Redis take writes again (memory, a failover) and repeat the call on this "
            "host: it stores them in Redis; do not delete that file",
        )


def _transact(
    keys: _Keys,
    key: str,
    step: Step[T],
    schema: Schema | None,
    expires_at: Expiry,
) -> T:
    """WATCH ``key``, let ``step`` decide, apply in MULTI/EXEC; again if someone changed it."""
    with keys.guard(key):
        for _ in range(TRANSACTION_TRIES):
            with keys.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current = _loads(pipe.get(key), schema, key)
                    decision, result = step(current)
                    pipe.multi()
                    if decision is Change.DELETE:
                        pipe.delete(key)
                    elif decision is not Change.KEEP:
                        until = expires_at(decision)
                        if until is None:
                            pipe.set(key, _dumps(decision))
                        else:
                            pipe.set(key, _dumps(decision), pxat=int(until * 1000))
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue
        raise StoreUnavailableError(
            f"the shared state {key} kept changing under us",
            code="STATE_BACKEND_BUSY",
            hint="retry",
        )


class RedisDocuments:
    """Documents of one namespace as plain keys; they expire by themselves (no sweep)."""

    def __init__(self, keys: _Keys, namespace: str) -> None:
        self._keys = keys
        self._prefix = keys.key(namespace, "")

    def _key(self, name: str) -> str:
        return self._prefix + name

    def create(self, name: str, doc: Any, *, expires_at: float | None = None) -> bool:
        with self._keys.guard(self._key(name)):
            if expires_at is None:
                return bool(self._keys.client.set(self._key(name), _dumps(doc), nx=True))
            until = int(expires_at * 1000)
            return bool(self._keys.client.set(self._key(name), _dumps(doc), nx=True, pxat=until))

    def read(self, name: str, schema: Mapping[str, Any] | None = None) -> Any:
        with self._keys.guard(self._key(name)):
            raw = self._keys.client.get(self._key(name))
        return _loads(raw, schema, self._key(name))

    def exists(self, name: str) -> bool:
        with self._keys.guard(self._key(name)):
            return bool(self._keys.client.exists(self._key(name)))

    def delete(self, name: str) -> None:
        with self._keys.guard(self._key(name)):
            self._keys.client.delete(self._key(name))

    def names(self) -> list[str]:
        with self._keys.guard():
            found = self._keys.client.scan_iter(match=self._prefix + "*", count=500)
            return [_text(key)[len(self._prefix) :] for key in found]

    def usage(self) -> int:
        """The values' lengths, read in one round trip (a key gone meanwhile counts 0)."""
        with self._keys.guard():
            keys = list(self._keys.client.scan_iter(match=self._prefix + "*", count=500))
            pipe = self._keys.client.pipeline(transaction=False)
            for key in keys:
                pipe.strlen(key)
            return sum(int(n or 0) for n in pipe.execute())

    def transact(
        self, name: str, step: Step[T], *, schema: Schema | None = None, expires_at: Expiry = never
    ) -> T:
        return _transact(self._keys, self._key(name), step, schema, expires_at)

    def sweep(self, select: Selector, *, every: float = 0.0, schema: Schema | None = None) -> int:
        return 0  # keys carry their own expiry


class RedisLeases:
    """A worker's lease (renewed by a thread) and who owns which reservation."""

    def __init__(self, keys: _Keys, queue: str, worker: str, lease_s: float) -> None:
        self._keys = keys
        self._worker = worker
        self._lease_s = lease_s
        self._lease_prefix = keys.key(queue, "lease", "")
        self._owner_prefix = keys.key(queue, "owner", "")
        self._claim = keys.client.register_script(scripts.CLAIM)
        self._renewed = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _renew(self) -> None:
        with self._keys.guard(self._lease_prefix + self._worker):
            self._keys.client.set(
                self._lease_prefix + self._worker, "1", px=int(self._lease_s * 1000)
            )
        self._renewed = time.monotonic()

    def start(self) -> None:
        self._renew()
        self._thread = threading.Thread(target=self._keep, name="b24-worker-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self._lease_s / 4):
            try:
                self._renew()
            except (TransientError, ConfigError) as exc:
                log.warning("could not renew the worker lease: %s", exc.message)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def valid(self) -> bool:
        return time.monotonic() - self._renewed < self._lease_s / 2

    def claim(self, process_id: str) -> bool:
        with self._keys.guard(self._owner_prefix + process_id):
            won = self._claim(
                keys=[self._owner_prefix + process_id],
                args=[self._worker, self._lease_prefix, int(OWNER_KEEP_S * 1000)],
            )
        return bool(won)


class RedisBackend:
    """State in one Redis shared by every host (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str, *, portal: str) -> None:
        parts = urlsplit(url)
        self._shown = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
        # TLS checks the certificate's host name too: redis-py before 6.0 (requirements allow
        # 5.x) checks only the chain, so any certificate a public CA signed would do.
        tls = {"ssl_check_hostname": True} if parts.scheme == "rediss" else {}
        client = redis.Redis.from_url(
            url,
            socket_timeout=5.0,
            socket_connect_timeout=3.0,
            retry=None,
            health_check_interval=30,
            **tls,
        )
        self._keys = _Keys(client, f"b24:{portal}:", self._shown)

    def bucket(
        self, *, interval: float, tolerance: float, path: Path, schema: Mapping[str, Any]
    ) -> RedisBucket:
        return RedisBucket(self._keys, interval, tolerance)

    def tokens(self, name: str, *, path: Path, schema: Mapping[str, Any]) -> RedisTokens:
        return RedisTokens(self._keys, name, schema, path)

    def documents(self, namespace: str, *, folder: Path) -> RedisDocuments:
        return RedisDocuments(self._keys, namespace)

    def worker_leases(self, queue: str, worker: str, *, lease_s: float) -> RedisLeases:
        return RedisLeases(self._keys, queue, worker, lease_s)

    def describe(self) -> str:
        return self._shown

    def refuse_open(self) -> None:
        """Refuse a Redis that answers a connection without credentials (STATE_STORE_OPEN).

        The URL's password proves nothing: redis-py authenticates with ``HELLO 3 AUTH``, which
        a Redis whose default user needs no password accepts with any password, so a Redis that
        lost its ``requirepass`` (started without its config file, a new replica) would stay in
        use with every local user able to read the tokens. A stranger's read of one of our keys
        must be refused (NOAUTH, or NOPERM from an ACL)."""
        pool = self._keys.client.connection_pool
        options = {
            name: value
            for name, value in pool.connection_kwargs.items()
            if name not in ("username", "password", "credential_provider")
        }
        stranger = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **options)
        )
        try:
            with self._keys.guard():
                try:
                    stranger.get(self._keys.key("tokens", "probe"))
                except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
                    return
        finally:
            stranger.close()
        raise ConfigError(
            f"the shared state store {self._shown} answers without a password: every local "
            "user could read the OAuth tokens and the plan signing key in it",
            code="STATE_STORE_OPEN",
            hint="give Redis a password (requirepass, or an ACL user whose default user is off) "
            "and put it in B24_STATE_BACKEND",
        )
