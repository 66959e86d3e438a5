"""An HTTP endpoint for ``ONOFFLINEEVENT`` notices, so a continuous worker need not poll often.

The portal posts ``onOfflineEvent`` to an online handler when rows join the queue
(on-offline-event.md). The notice carries no event data, only ``auth[application_token]``: this
is where the offline-event flow carries the app's secret, so this is where the token is checked
(constant time). A notice that fails the check is answered 403, logged and counted, and wakes
nothing; a valid one ends the worker's sleep at once. Either way the notice is only a hint: the
rows themselves are still fetched with the worker's own authenticated ``event.offline.get``.
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

log = logging.getLogger("b24agent.worker")


class WakeListener:
    """Serves ``POST`` notices on ``host:port`` in a daemon thread until ``close``."""

    def __init__(self, host: str, port: int, token: str, wake: threading.Event) -> None:
        self._token = token
        self._wake = wake
        self._lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
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
        except (UnicodeDecodeError, ValueError):
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

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(max(length, 0), MAX_BODY))
                status = listener.verdict(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("notice endpoint: " + format, *args)

        return Handler
