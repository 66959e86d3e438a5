"""HTTP front of the sandbox portal: routes, bodies in, JSON out.

Routes (protocol.md section 1):
``/rest/<USER_ID>/<CODE>/<METHOD>`` webhook v2 · ``/rest/<METHOD>`` OAuth v2 ·
``/rest/api/<USER_ID>/<CODE>/<METHOD>`` and ``/rest/api/<METHOD>`` REST 3.0 ·
``/oauth/token/`` token server · ``/_sandbox/<op>`` admin (see ``admin``).

HTTP/1.1 keep-alive with an exact Content-Length and one buffered write per answer, because
benchmarks push tens of thousands of calls through one server; per-request logging is off.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from . import v3
from .admin import check_token, run_admin
from .bodies import MAX_BODY_BYTES, decode_form, decode_json, too_large, v2_params, v3_params
from .context import AuthInfo, CallContext
from .envelope import success_body
from .errors import PortalError
from .faults import RawAnswer
from .jsonout import encode
from .limits import limit_error
from .oauth import TokenError
from .portal import Portal, credential_key, normalize_method

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, encode(payload), headers=headers or {})


@dataclass
class Route:
    """Where a ``/rest/`` request goes: API version, method and webhook part of the path."""

    api: str
    method: str
    webhook: tuple[str, str] | None


def parse_rest_path(path: str) -> Route:
    parts = [unquote(p) for p in path[len("/rest/") :].split("/") if p]
    api = "v2"
    if parts and parts[0].lower() == "api":
        api, parts = "v3", parts[1:]
    if len(parts) == 3:
        return Route(api, normalize_method(parts[2]), (parts[0], parts[1]))
    if len(parts) == 1:
        return Route(api, normalize_method(parts[0]), None)
    raise PortalError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)


class SandboxServer(ThreadingHTTPServer):
    """Threaded server holding the portal. Handler threads are daemons so shutdown never waits
    for an idle keep-alive client."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], portal: Portal) -> None:
        super().__init__(address, Handler)
        self.portal = portal
        host, port = self.server_address[:2]
        portal.base_url = f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Bitrix24Sandbox/1.0"
    sys_version = ""
    #: Headers and body leave in one buffered write; TCP_NODELAY avoids delayed-ACK stalls.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    timeout = 120
    server: SandboxServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a line per request would cost more than the request itself."""

    def handle_expect_100(self) -> bool:
        """Send ``100 Continue`` now: with a buffered wfile it would wait for the final answer,
        and clients such as curl stall a second before sending the body anyway."""
        proceed = super().handle_expect_100()
        self.wfile.flush()
        return proceed

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # --- plumbing -------------------------------------------------------------------------

    @property
    def portal(self) -> Portal:
        return self.server.portal

    def _answer(self, verb: str) -> None:
        path, _, query = self.path.partition("?")
        slow = True
        try:
            body = self._read_body()
            if path.startswith("/rest/"):
                answer = self._rest(path, query, body)
            elif path.rstrip("/") == "/oauth/token":
                answer = self._token(query, body)
            elif path.startswith("/_sandbox/"):
                slow = False
                answer = self._admin(verb, path, body)
            else:
                slow = False
                answer = json_answer(404, {"error": "NOT_FOUND", "error_description": path})
        except PortalError as error:
            answer = json_answer(error.status, error.body())
        except RawAnswer as raw:
            answer = Answer(raw.status, raw.body, raw.content_type, raw.headers)
        except Exception as exc:  # a sandbox bug must still answer, and name itself
            sys.stderr.write(f"sandbox: internal error: {exc.__class__.__name__}: {exc}\n")
            answer = json_answer(
                500, {"error": "INTERNAL_SERVER_ERROR", "error_description": "sandbox bug"}
            )
        if slow and answer.status in (429, 503) and path.startswith("/rest/"):
            self.portal.stats.bump("http_rejections")
        latency = self.portal.config.latency_ms
        if slow and latency:
            time.sleep(latency / 1000.0)
        self._send(answer)

    def _handle(self, verb: str) -> None:
        """Count REST requests being answered at once (admin calls excluded), so a test can
        tell a client that sends in parallel from one that only claims to."""
        if not self.path.startswith("/rest/"):
            self._answer(verb)
            return
        with self.portal.stats.in_flight():
            self._answer(verb)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise PortalError("ERROR_ARGUMENT", "Bad Content-Length", 400) from None
        if length > MAX_BODY_BYTES or length < 0:
            self.close_connection = True
            raise too_large()
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            raise PortalError("ERROR_ARGUMENT", "Request body shorter than Content-Length", 400)
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise PortalError("ERROR_ARGUMENT", "Bad chunked encoding", 400) from None
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise too_large()
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)

    # --- REST -----------------------------------------------------------------------------

    def _moved(self, path: str, query: str) -> Answer | None:
        """A renamed portal (change-domen.md): 302 to the new address, nothing run."""
        moved_to = self.portal.config.moved_to
        if not moved_to or urlsplit(moved_to).netloc == self.headers.get("Host", ""):
            return None
        self.portal.stats.bump("redirects")
        location = moved_to + path + (f"?{query}" if query else "")
        return Answer(302, b"", "text/html; charset=utf-8", {"Location": location})

    def _rest(self, path: str, query: str, body: bytes) -> Answer:
        moved = self._moved(path, query)
        if moved is not None:
            return moved
        route = parse_rest_path(path)
        portal = self.portal
        portal.stats.request(route.method)
        ctype = self.headers.get("Content-Type", "")
        key = self.headers.get("Idempotency-Key") if route.api == "v3" else None
        try:
            params = (
                v3_params(body, ctype, batch=route.method == "batch")
                if route.api == "v3"
                else v2_params(query, body, ctype)
            )
            auth = self._authenticate(route, params)
            if not portal.bucket.take():
                portal.stats.bump("rate_limit_rejections")
                raise limit_error()
            if key is not None and v3.is_write(route.method):
                return self._idempotent(route, auth, params, key)
            return self._call(route, auth, params)
        except PortalError as error:
            if route.api == "v2":
                raise
            status, payload = v3.error_body(error)
            return json_answer(status, payload, {"Idempotency-Key": key} if key else None)

    def _authenticate(self, route: Route, params: dict[str, Any]) -> AuthInfo:
        if route.webhook is not None:
            return self.portal.webhook_auth(*route.webhook)
        header = self.headers.get("Authorization", "") if self.portal.config.bearer_header else ""
        scheme, _, bearer = header.partition(" ")
        token_params = [params.pop(name, None) for name in ("auth", "access_token")]
        token = bearer.strip() if scheme.lower() == "bearer" else None
        token = token or next((t for t in token_params if isinstance(t, str) and t), None)
        return self.portal.token_auth(token)

    def _call(self, route: Route, auth: AuthInfo, params: dict[str, Any]) -> Answer:
        connector = params.get("auth_connector")
        ctx = CallContext(
            self.portal,
            auth,
            route.api,
            auth_connector=connector if isinstance(connector, str) else None,
            idempotency_key=self.headers.get("Idempotency-Key") if route.api == "v3" else None,
        )
        value, timing = self.portal.timed_dispatch(ctx, route.method, params)
        return json_answer(200, success_body(value, timing, php=route.api == "v2"))

    def _idempotent(self, route: Route, auth: AuthInfo, params: dict[str, Any], key: str) -> Answer:
        """REST 3.0 Idempotency-Key: replay a stored success, refuse a reused key (422)."""
        v3.check_key(key)
        cache_key = (credential_key(auth), str(auth.user_id), route.method, key)
        print_ = v3.fingerprint(params)
        stored = self.portal.idempotency.lookup(cache_key, print_)
        if stored is not None:
            return Answer(
                200, stored, headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"}
            )
        answer = self._call(route, auth, params)
        self.portal.idempotency.store(cache_key, print_, answer.body)
        answer.headers["Idempotency-Key"] = key
        return answer

    # --- token server and admin -----------------------------------------------------------

    def _token(self, query: str, body: bytes) -> Answer:
        """``/oauth/token/``: GET query (the documented form) or a POSTed form."""
        portal = self.portal
        try:
            params = decode_form(query) if query else {}
            if body.strip():
                params.update(decode_form(body))
            fault = portal.faults.pick("oauth.token")
            if fault is not None and not fault.after:
                fault.fire()
            answer = portal.oauth.refresh(params, portal.base_url)
            if fault is not None:
                fault.fire()
        except TokenError as error:
            portal.stats.bump("failed_refreshes")
            return json_answer(400, error.body())
        except (PortalError, RawAnswer):
            portal.stats.bump("failed_refreshes")
            raise
        portal.stats.bump("token_refreshes")
        return json_answer(200, answer)

    def _admin(self, verb: str, path: str, body: bytes) -> Answer:
        check_token(self.portal, self.headers.get("X-Sandbox-Admin", ""))
        op = path[len("/_sandbox/") :].strip("/")
        payload = decode_json(body) if body.strip() else {}
        return json_answer(200, run_admin(self.portal, verb, op, payload))
