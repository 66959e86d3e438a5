"""urllib3 connection pools whose connections the answer deadline (deadline.py) watches from
their first byte, and lets go of before they go back to the pool.

requests reads an answer's status line and headers inside ``Session.send``, out of the caller's
reach, so a deadline armed once ``send`` returned left a trickled head (or endless
``100 Continue`` answers) unbounded. Here each connection hands its socket to the exchange this
thread is having (``deadline.within``) the moment the socket exists, before the TLS handshake and
the request's first byte, or the moment the pool hands a kept-alive connection out for a new
request; and the pool ends that watch before it takes the connection back, so a deadline can
only ever cut the exchange it belongs to, never the next one on the same connection.

A session of the caller's own (``Bitrix24Client(session=...)``) or a SOCKS proxy has other pools:
there the deadline watches the answer's body only, from when requests has the headers, until
the exchange ends (a deadline passing just after urllib3 took the connection back may then cut
it in the pool).
"""

from __future__ import annotations

import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import poolmanager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import deadline

__all__ = ["WatchedAdapter"]


class _Watched:
    """Mixed into urllib3's connection classes (before them)."""

    #: The deadline of the exchange this connection serves, until it goes back to its pool.
    deadline_cut: deadline.Cut | None = None
    sock: Any

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._join(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # kept alive from an earlier exchange, or connected already
            self._join(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def _join(self, sock: Any) -> None:
        cut = deadline.adopt(sock)
        if cut is not None:
            self.deadline_cut = cut


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _LettingGo:
    """Mixed into urllib3's pools (before them): a connection coming back is no longer watched,
    and one its deadline cut is closed instead of handed out again."""

    def _put_conn(self, conn: Any) -> None:
        cut = getattr(conn, "deadline_cut", None)
        if cut is not None:
            conn.deadline_cut = None
            if deadline.let_go(cut):
                conn.close()
        super()._put_conn(conn)  # type: ignore[misc]


class _WatchedPool(_LettingGo, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedTLSPool(_LettingGo, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedPool, "https": _WatchedTLSPool}


class WatchedAdapter(HTTPAdapter):
    """An HTTPAdapter whose pools, direct or through an HTTP(S) proxy, are the watched ones."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is poolmanager.pool_classes_by_scheme:  # not SOCKS
            manager.pool_classes_by_scheme = _POOLS
        return manager
