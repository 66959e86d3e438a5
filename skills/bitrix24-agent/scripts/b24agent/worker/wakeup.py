"""An HTTP endpoint for ``ONOFFLINEEVENT`` notices, so a continuous worker need not poll often.

The portal posts ``onOfflineEvent`` to an online handler when rows join the queue
(on-offline-event.md). The notice carries no event data; its ``auth`` block holds the app's
``application_token`` and also an access and a refresh token (events/index.md, "Parameter
auth"), which nothing here reads, keeps or logs. Whoever takes notices receives a credential,
so the CLI refuses ``--listen`` through the broker, whose worker holds none. The token is
checked in constant time: a notice that fails the check is answered 403, logged and counted,
and wakes nothing; a valid one ends the worker's sleep at once. Either way the notice is only a
hint: the rows themselves are still fetched with the worker's own authenticated
``event.offline.get``.

The endpoint faces the network, so it is bounded: a request with a malformed ``Content-Length``
gets a plain 400 (never a traceback), a connection that stalls is dropped after ``timeout``
seconds of silence, and at most ``MAX_CONNECTIONS`` are served at once; more are closed at once
instead of each holding a thread. A dropped notice costs nothing: the worker still polls.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..encoding import decode_query
from .authenticity import token_matches

__all__ = ["NOTICE_EVENT", "WakeListener"]

NOTICE_EVENT = "ONOFFLINEEVENT"
MAX_BODY = 64 * 1024
#: Connections served at once; a notice is tiny and answered in microseconds.
MAX_CONNECTIONS = 8
#: Seconds a connection may stay silent (per read) before it is dropped.
IDLE_TIMEOUT_S = 5.0

log = logging.getLogger("b24agent.worker")


class WakeListener:
    """Serves ``POST`` notices on ``host:port`` in a daemon thread until ``close``."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        wake: threading.Event,
        *,
        timeout: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._token = token
        self._wake = wake
        self._lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self._server = _BoundedServer((host, port), self._handler_class(timeout), max_connections)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="offline-notices", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> WakeListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def verdict(self, body: bytes) -> int:
        """HTTP status for one notice body; counts it and wakes the worker when valid."""
        try:
            payload: dict[str, Any] = decode_query(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # not a form the portal sends
            payload = {}
        if not token_matches(self._token, payload):
            with self._lock:
                self.rejected += 1
            log.error("refused a queue notice: application_token does not match")
            return 403
        if str(payload.get("event", "")).upper() != NOTICE_EVENT:
            return 400
        with self._lock:
            self.accepted += 1
        self._wake.set()
        return 200

    def _handler_class(self, timeout: float) -> type[BaseHTTPRequestHandler]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                self.timeout = timeout  # StreamRequestHandler sets it on the socket
                super().setup()

            def do_POST(self) -> None:
                length = _content_length(self.headers.get("Content-Length"))
                if length is None:
                    self._answer(400)
                    return
                status = listener.verdict(self.rfile.read(length))
                self._answer(status)

            def _answer(self, status: int) -> None:
                self.close_connection = status != 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("notice endpoint: " + format, *args)

        return Handler


def _content_length(header: str | None) -> int | None:
    """The body length to read, or None when the header is not a sane one (not digits, or past
    MAX_BODY: a notice is a few hundred bytes)."""
    if header is None or not header.strip():
        return 0
    text = header.strip()
    if not text.isdigit() or len(text) > 9 or int(text) > MAX_BODY:
        return None
    return int(text)


class _BoundedServer(ThreadingHTTPServer):
    """A threading server with at most ``slots`` connections served at once; a connection past
    that is closed at once, and a handler's failure is one log line, never a traceback."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], slots: int
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(slots)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("notice endpoint busy: dropped a connection from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("notice endpoint: a request from %s failed", client_address[0])
