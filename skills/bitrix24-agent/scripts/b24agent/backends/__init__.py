"""Where shared state lives: ``file`` (one machine, the default) or Redis (a fleet on one portal).

The limiter's bucket, the OAuth token store, idempotency records, plans (and their signing key)
and the offline worker's leases all go through one ``Backend`` (base.py), so the REST and guard
code never knows which one is in use. ``Settings.state_backend`` picks it:

    file                          backends/file.py: files under B24_STATE_DIR, file locks
    redis://:pw@host:port/db      backends/redis_store.py: one Redis for every host (rediss://
                                  for TLS); an unreachable Redis is a TransientError (exit 6),
                                  never a silent fall back to per-host files; a Redis that
                                  answers without a password is refused (STATE_STORE_OPEN)

redis-py is imported only when a Redis URL is configured.
"""

from __future__ import annotations

import threading

from ..errors import ConfigError
from ..settings import Settings
from .base import Backend

__all__ = ["Backend", "open_backend"]

_OPEN: dict[tuple[str, str], Backend] = {}
_LOCK = threading.Lock()


def open_backend(settings: Settings) -> Backend:
    """The backend ``settings.state_backend`` names, one per URL and portal in this process (a
    Redis connection pool is shared by every store that uses it)."""
    spec = settings.state_backend
    if spec == "file":
        from .file import FileBackend

        return FileBackend()
    with _LOCK:
        key = (spec, settings.portal_key)
        backend = _OPEN.get(key)
        if backend is None:
            try:
                from .redis_store import RedisBackend
            except ImportError as exc:
                raise ConfigError(
                    f"B24_STATE_BACKEND names a Redis, but redis-py cannot be imported ({exc})",
                    code="DEPENDENCY_MISSING",
                    hint="install the skill's packages (scripts/requirements.txt), or set "
                    "B24_STATE_BACKEND=file on a single machine",
                ) from None

            redis_backend = RedisBackend(spec, portal=settings.portal_key)
            redis_backend.refuse_open()  # once per process; not kept if it fails
            backend = _OPEN[key] = redis_backend
        return backend
