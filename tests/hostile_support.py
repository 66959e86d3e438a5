"""A hostile portal on 127.0.0.1: answers every request with what a test's ``answer`` says.

The sandbox portal follows the protocol; this one breaks it on purpose (megabytes of error text,
a ``next`` that never moves, ``Infinity``, nesting deeper than Python's reader goes), as a broken
portal or a proxy on the way could. It counts the requests, and past ``fuse`` of them answers a
plain ERROR_CORE refusal: a client that would loop for ever on the hostile answers ends there, so
a test of the old behaviour fails (with the wrong error) instead of hanging.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: ``answer(path, body) -> (status, bytes)``: ``body`` is the request's JSON, decoded.
Answer = Callable[[str, Any], tuple[int, bytes]]

#: Long enough to pass the MCP result cap (60,000 bytes) and a pipe's 64 KB many times over.
HUGE = 1_000_000
BIG_ERROR = json.dumps({"error": "ERROR_CORE", "error_description": "A" * HUGE}).encode()
#: An error line with the portal's text cut: errors.PORTAL_TEXT_MAX (2,000) characters and a
#: little more.
ERROR_LINE_MAX = 3_000

FUSE_CODE = "ERROR_CORE"
FUSE_TEXT = "hostile portal: fuse blown"


class HostilePortal:
    """The server; ``webhook_url`` is what B24_WEBHOOK_URL takes, ``requests`` the count."""

    def __init__(self, answer: Answer, fuse: int, content_type: str = "application/json") -> None:
        self.answer = answer
        self.fuse = fuse
        self.content_type = content_type
        self.requests = 0
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.webhook_url = f"{self.url}/rest/1/hostilecode123/"

    def _respond(self, path: str, raw: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            blown = self.requests > self.fuse
        if blown:
            return 400, json.dumps({"error": FUSE_CODE, "error_description": FUSE_TEXT}).encode()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return self.answer(path, body)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        portal = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, out = portal._respond(self.path, self.rfile.read(length))
                self.send_response(status)
                self.send_header("Content-Type", portal.content_type)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                return

        return Handler

    def start(self) -> HostilePortal:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def hostile(
    answer: Answer, fuse: int = 40, content_type: str = "application/json"
) -> Iterator[HostilePortal]:
    portal = HostilePortal(answer, fuse, content_type).start()
    try:
        yield portal
    finally:
        portal.stop()


def always(status: int, body: bytes) -> Answer:
    """The same answer to every request."""
    return lambda _path, _body: (status, body)


def pages(
    rows: Callable[[int], list[Any]],
    following: Callable[[int], int | None],
    total: int | None = 10**6,
) -> Answer:
    """A list method paging by offset, batch included: the page at ``start`` holds
    ``rows(start)`` and says ``next: following(start)``, with a constant ``total`` (None:
    none said)."""

    def page(start: int) -> tuple[list[Any], int | None]:
        return rows(start), following(start)

    def answer(path: str, body: Any) -> tuple[int, bytes]:
        if "/batch" in path:
            cmd = body.get("cmd") or {}
            found = {name: page(_start_of(text)) for name, text in cmd.items()}
            result = {
                "result": {name: got[0] for name, got in found.items()},
                "result_error": [],
                "result_total": {name: total for name in found if total is not None},
                "result_next": {n: got[1] for n, got in found.items() if got[1] is not None},
                "result_time": {},
            }
            return 200, json.dumps({"result": result, "time": {}}).encode()
        listed, nxt = page(int(body.get("start") or 0))
        document: dict[str, Any] = {"result": listed, "time": {}}
        if total is not None:
            document["total"] = total
        if nxt is not None:
            document["next"] = nxt
        return 200, json.dumps(document).encode()

    return answer


def _start_of(command: str) -> int:
    from b24agent.encoding import parse_batch_command

    return int(parse_batch_command(command)[1].get("start") or 0)
