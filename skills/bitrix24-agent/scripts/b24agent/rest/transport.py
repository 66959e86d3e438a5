"""One HTTP exchange with the portal: build the address, send JSON, turn the answer into a
success envelope or the right B24Error. No retries here (retrying.py decides those).

Every failure is classified by what it proves about the call: refused before sending
(connection refused, DNS, connect timeout) means the portal never saw it; a timeout, a dropped
connection or an unreadable answer after sending means it may have run. Answers are read by
their ``error`` string first, whatever the status (a 200 can carry an error). Malformed answers
(HTML, truncated or wrong-shaped JSON, empty body, and what Python's reader takes but JSON does
not have: ``NaN``, ``Infinity``, nesting past the recursion limit) become server faults that
describe the answer's type and size, never its text: an HTML error page may echo the request URL
and with it the webhook code. Messages never include the URL either, for the same reason.

An answer is read as a stream and at most ``B24_MAX_ANSWER_MB`` of it once decoded (default 128
MB, some forty times a 50-command batch of full list pages), so a huge answer or a gzip bomb is
refused as a server fault (ANSWER_TOO_LARGE; exit 7 for a write) instead of filling memory.
It must arrive whole, status line and headers included, within ``B24_ANSWER_TIMEOUT`` of
sending (default 300 s; ``B24_READ_TIMEOUT`` bounds each read only): the deadline watches the
connection from before the request's first byte (deadline.py, pools.py), and past it the
connection is cut and the call is a server fault too (ANSWER_TIMEOUT), so a portal trickling its
answer, or its headers, cannot hold a call for ever. A deadline that strikes before any of the
body left (a connect or TLS handshake slower than it) is ANSWER_TIMEOUT "not sent".
A request counts as sent from the moment it is handed to the wire: only a failure that proves it
never left (no connection, or a TLS handshake that failed or timed out before any of it was
written) takes that back, so anything else that goes wrong later, a TLS record broken mid-answer
or even a bug, leaves a write "may have run" (``writes_out``), never "safe to repeat".

A renamed portal answers 302 with its new address (settings/how-to-call-rest-api/change-domen.md);
the method did not run there. The same POST (same body, never turned into a GET) is sent once to
the new address, and only where credentials may go: the same ``/rest/...`` path (a webhook's
secret is in it) over https, plain http only on loopback as for ``B24_DOMAIN``. Anything else is
refused with nothing run. Later calls go straight to the new address, and the operator is told
it once (one JSON line on stderr), so the configuration can be fixed.

A caller may watch one exchange (``Watcher``): told when the request has been handed to the
socket in full, and given a 200 answer's bytes before they are decoded. The id-chained export
uses both to send its next batch the moment the start id is in the bytes, not after decoding.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from .. import __version__
from ..encoding import loads_strict
from ..errors import (
    B24Error,
    ConfigError,
    OutcomeUnknownError,
    UsageError,
    error_from_v3,
    not_sent,
    server_fault,
)
from ..settings import Settings, is_loopback_host
from . import deadline
from .answers import AnswerTimeout, read_capped
from .auth import Credential
from .pools import WatchedAdapter

__all__ = ["Envelope", "Transport", "Watcher", "new_session"]

USER_AGENT = f"bitrix24-agent/{__version__}"
#: A renamed portal redirects once; a few hops allow a rename chain, more is a loop.
MAX_REDIRECTS = 3


def tell_operator_moved(new_base: str) -> None:
    """One JSON line on stderr: where the portal answers now (scheme, host and port only)."""
    notice = {
        "notice": {
            "code": "PORTAL_MOVED",
            "message": f"the portal answers at {new_base} now; calls were repeated there",
            "hint": "set B24_DOMAIN (or B24_WEBHOOK_URL) to the new address",
            "new_address": new_base,
        }
    }
    sys.stderr.write(json.dumps(notice) + "\n")


@dataclass(frozen=True)
class Envelope:
    """A success answer: the parsed body and what the headers said."""

    body: dict[str, Any]
    http_status: int
    replayed: bool = False
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def time(self) -> dict[str, Any]:
        timing = self.body.get("time")
        return timing if isinstance(timing, dict) else {}


class Watcher(Protocol):
    """Watches one exchange as it happens. Neither method may raise or block for long."""

    def sent(self) -> None:
        """The whole request has been handed to the socket."""

    def answered(self, body: bytes) -> None:
        """A 200 answer arrived; ``body`` is its raw bytes, not yet decoded or checked."""


class _TellingBody:
    """A request body that notes when urllib3 starts sending it and calls ``sent`` once it has
    written it: urllib3 sends an iterable body chunk by chunk and asks for the first chunk only
    once connected, past the TLS handshake and with the headers written, and for the next only
    after ``sendall`` returned. Its length is known, so it goes with a Content-Length."""

    def __init__(self, data: bytes, sent: Callable[[], None] | None = None) -> None:
        self._data = data
        self._sent = sent
        #: Whether the request began to leave: a TLS error after that is not a failed handshake.
        self.started = False

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[bytes]:
        self.started = True
        yield self._data
        if self._sent is not None:
            self._sent()


def new_session(pool_size: int = 10) -> requests.Session:
    """A keep-alive session. urllib3 must never resend on its own (Retry 0): only the retry
    policy knows whether a call may be repeated. Its pools let the answer deadline watch each
    connection from its first byte (pools.py)."""
    session = requests.Session()
    adapter = WatchedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
    return session


class Transport:
    """Sends one request per ``send`` call over a shared keep-alive session."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        on_moved: Callable[[str], None] = tell_operator_moved,
    ) -> None:
        self.session = session or new_session()
        self._base = settings.base_url.rstrip("/")
        self._on_moved = on_moved
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._answer_timeout = settings.answer_timeout
        self._max_answer = settings.max_answer_mb * 1024 * 1024
        self._count_lock = threading.Lock()
        self.requests_sent = 0
        #: Writes handed to the wire whose answer did not prove they did not run: each of them
        #: may have run (guard/pipeline.py reads it to word a later failure).
        self.writes_out = 0

    def url(self, method: str, credential: Credential, api: str) -> str:
        section = "rest/api/" if api == "v3" else "rest/"
        return f"{self._base}/{section}{credential.path_prefix}{method}"

    def send(
        self,
        method: str,
        params: Mapping[str, Any],
        credential: Credential,
        *,
        api: str = "v2",
        write: bool,
        idempotency_key: str | None = None,
        watcher: Watcher | None = None,
    ) -> Envelope:
        """POST ``params`` as JSON to ``method``; return the success envelope or raise."""
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None and api == "v3":
            headers["Idempotency-Key"] = idempotency_key
        if credential.token is not None:
            params = {**params, "auth": credential.token}
        try:
            data = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"{method}: params cannot be sent as JSON ({type(exc).__name__})",
                code="INVALID_PARAMS",
            ) from None
        self._count(writes=int(write))
        try:
            reply, body = self._exchange(
                method, data, headers, credential, api=api, write=write, watcher=watcher
            )
            if watcher is not None and reply.status_code == 200:
                watcher.answered(body)
            return decode(reply, body, method=method, api=api, write=write)
        except B24Error as exc:
            exc.verdict = True
            if write and not isinstance(exc, OutcomeUnknownError):
                self._count(writes=-1)  # refused by the portal, or it never left: it did not run
            raise

    def _exchange(
        self,
        method: str,
        data: bytes,
        headers: dict[str, str],
        credential: Credential,
        *,
        api: str,
        write: bool,
        watcher: Watcher | None,
    ) -> tuple[requests.Response, bytes]:
        url = self.url(method, credential, api)
        for _ in range(MAX_REDIRECTS):
            reply, body = self._post(
                url, data, headers, method=method, write=write, watcher=watcher
            )
            if not reply.is_redirect:
                return reply, body
            url = self._follow(reply, url, method)
        return self._post(url, data, headers, method=method, write=write, watcher=watcher)

    def _post(
        self,
        url: str,
        data: bytes,
        headers: dict[str, str],
        *,
        method: str,
        write: bool,
        watcher: Watcher | None,
    ) -> tuple[requests.Response, bytes]:
        """The answer and its decoded body. Counted as sent before it goes (module docstring)."""
        body = _TellingBody(data, None if watcher is None else watcher.sent)
        self._count(sent=1)
        with deadline.within(self._answer_timeout) as cut:
            try:
                reply = self.session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                # Cut before any of the body went: the portal cannot have the whole request.
                left = body.started if cut.passed else _reached_wire(exc, started=body.started)
                if not left:
                    self._count(sent=-1)
                if cut.passed:
                    raise self._timed_out(None, method=method, write=write, left=left) from None
                raise network_error(exc, method=method, write=write, left=left) from None
            with reply:
                return reply, self._read(reply, cut, method=method, write=write)

    def _read(
        self, reply: requests.Response, cut: deadline.Cut, *, method: str, write: bool
    ) -> bytes:
        """The decoded body, at most ``B24_MAX_ANSWER_MB``, whole before ``cut``; any failure
        here is after sending."""
        try:
            body = read_capped(reply, self._max_answer, cut)
        except AnswerTimeout as exc:
            raise self._timed_out(exc.status, method=method, write=write) from None
        except requests.exceptions.ContentDecodingError:
            raise server_fault(
                "MALFORMED_RESPONSE",
                f"{method}: the portal's answer is not valid gzip (HTTP {reply.status_code})",
                reply.status_code,
                write=write,
                hint="a proxy or the portal failed mid-answer; check B24_DOMAIN if it persists",
            ) from None
        except requests.RequestException as exc:
            raise server_fault(
                "NETWORK_ERROR",
                f"{method}: lost the connection while reading the answer ({type(exc).__name__})",
                reply.status_code,
                write=write,
                hint="the portal may be slow or overloaded",
            ) from None
        if body is None:
            raise _too_large(reply, self._max_answer, method=method, write=write)
        return body

    def _timed_out(
        self, status: int | None, *, method: str, write: bool, left: bool = True
    ) -> B24Error:
        """The answer deadline passed: ``status`` is the answer's, None when it passed before
        the headers were in; ``left``: whether any of the request's body had gone."""
        if not left:
            return not_sent(
                "ANSWER_TIMEOUT",
                f"{method}: could not reach the portal within {self._answer_timeout:g} s; the "
                "call was not sent",
                hint="check the network and B24_DOMAIN; B24_ANSWER_TIMEOUT sets how long a call "
                "may take",
            )
        return server_fault(
            "ANSWER_TIMEOUT",
            f"{method}: the portal's answer did not arrive whole within "
            f"{self._answer_timeout:g} s of sending"
            + ("" if status is None else f" (HTTP {status})")
            + "; the connection was cut",
            status,
            write=write,
            hint="the portal or a proxy on the way is very slow; B24_ANSWER_TIMEOUT sets "
            "how long an answer may take",
        )

    def _follow(self, reply: requests.Response, url: str, method: str) -> str:
        """Where a redirect may be repeated (module docstring), or a ConfigError; nothing ran."""
        target = urljoin(url, reply.headers["Location"].strip())
        new, old = urlsplit(target), urlsplit(url)
        host = new.hostname or ""
        why = None
        if new.scheme not in ("http", "https") or not host or new.username or new.password:
            why = "an address that is not a plain https URL"
        elif new.scheme == "http" and not is_loopback_host(host):
            why = "a plain-http address (credentials go only over https)"
        elif new.path != old.path:
            why = "another path (credentials go only to the same /rest/ path)"
        if why is not None:
            raise ConfigError(
                f"{method}: the portal redirects (HTTP {reply.status_code}) to {why}; "
                "nothing was run and nothing was sent there",
                code="PORTAL_REDIRECT",
                hint="set B24_DOMAIN / B24_WEBHOOK_URL to the portal's current https address",
                http_status=reply.status_code,
            )
        base = f"{new.scheme}://{new.netloc}"
        if base != self._base:
            self._base = base
            self._on_moved(base)
        return target

    def _count(self, *, sent: int = 0, writes: int = 0) -> None:
        with self._count_lock:
            self.requests_sent += sent
            self.writes_out += writes


def network_error(
    exc: requests.RequestException, *, method: str, write: bool, left: bool
) -> B24Error:
    """Classify a requests failure by whether the request can have reached the portal
    (``left``, from ``_reached_wire``)."""
    name = type(exc).__name__
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return ConfigError(
            f"{method}: the portal address is not a valid URL", code="CONFIG_INVALID"
        )
    if not left and not isinstance(exc, requests.exceptions.SSLError):
        return not_sent(
            "CONNECTION_FAILED",
            f"{method}: could not connect to the portal ({name}); the call was not sent",
            hint="check the network and B24_DOMAIN; safe to retry",
        )
    if not left:
        return not_sent(
            "TLS_FAILED",
            f"{method}: the TLS handshake with the portal failed; the call was not sent",
            hint="check the portal's certificate and the system CA store",
        )
    what = (
        "timed out waiting for the answer"
        if isinstance(exc, requests.Timeout)
        else "lost the connection"
    )
    return server_fault(
        "NETWORK_ERROR",
        f"{method}: {what} after sending ({name})",
        None,
        write=write,
        hint="the portal may be slow or overloaded",
    )


def _reached_wire(exc: requests.RequestException, *, started: bool) -> bool:
    """False when the request provably never left: no TCP connection, or the TLS handshake
    failed or timed out (the HTTP request is written only after it; urllib3 reports a handshake
    past the connect timeout as a *read* timeout). A TLS error or a timeout once the body
    ``started`` to go (a record the portal or a middlebox broke while answering, an answer
    that never came) is not a handshake: the request may have run."""
    if started:
        return True
    if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.SSLError)):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        return not isinstance(reason, NewConnectionError)
    return not isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema))


def _too_large(reply: requests.Response, cap: int, *, method: str, write: bool) -> B24Error:
    error = server_fault(
        "ANSWER_TOO_LARGE",
        f"{method}: the portal's answer is larger than {cap >> 20} MB decoded (HTTP "
        f"{reply.status_code}); it was not read further",
        reply.status_code,
        write=write,
        hint="ask for smaller pages or fewer fields; if the portal really answers this much, "
        "the operator may raise B24_MAX_ANSWER_MB",
    )
    error.retryable = False  # the same request would get the same answer
    return error


#: A Content-Type a message may quote: a plain media type. Anything else is the portal's
#: free text (a header line may hold 64 KB of it) and is described, not repeated (review7b L-c).
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,40}/[\w.+-]{1,80}")


def _describe(reply: requests.Response, size: int) -> str:
    kind = (reply.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    if kind != "no content type" and not _MEDIA_TYPE.fullmatch(kind):
        kind = f"an unusual content type of {len(kind)} characters"
    return f"HTTP {reply.status_code}, {kind}, {size} bytes"


def _malformed(
    reply: requests.Response, size: int, what: str, *, method: str, write: bool
) -> B24Error:
    return server_fault(
        "MALFORMED_RESPONSE",
        f"{method}: the portal's answer is {what} ({_describe(reply, size)})",
        reply.status_code,
        write=write,
        hint="a proxy or the portal failed mid-answer; check B24_DOMAIN if it persists",
    )


def decode(
    reply: requests.Response, content: bytes, *, method: str, api: str, write: bool
) -> Envelope:
    """Turn an HTTP answer and its body into an Envelope, or raise the B24Error it means."""
    if reply.is_redirect:
        # Still redirecting after MAX_REDIRECTS hops: a loop. The Location is not shown, since
        # it may repeat the webhook path.
        raise ConfigError(
            f"{method}: the portal keeps redirecting (HTTP {reply.status_code}); nothing was run",
            code="PORTAL_REDIRECT",
            hint="set B24_DOMAIN / B24_WEBHOOK_URL to the portal's current https address",
            http_status=reply.status_code,
        )

    def malformed(what: str) -> B24Error:
        return _malformed(reply, len(content), what, method=method, write=write)

    if not content.strip():
        raise malformed("empty")
    try:
        body = loads_strict(content)
    except json.JSONDecodeError:
        html = content.lstrip()[:1] == b"<"
        raise malformed("an HTML page" if html else "not valid JSON (truncated?)") from None
    except ValueError as exc:  # NaN/Infinity, nesting past the limit, not UTF-8 (encoding.py)
        raise malformed(f"not plain JSON: {str(exc).split(';')[0][:100]}") from None
    if not isinstance(body, dict):
        raise malformed(f"JSON {type(body).__name__}, not an object")
    if "error" in body and body["error"] is not None:
        raise _error(body, reply, write=write)
    if "result" not in body and api == "v3" and "openapi" in body:
        body = {"result": body}  # rest.documentation.openapi answers the document itself
    if "result" not in body:
        raise malformed("JSON without result or error")
    if reply.status_code >= 400:
        raise malformed("a result with an error status")
    for key in ("total", "next"):
        if key in body and not isinstance(body[key], int):
            raise malformed(f"JSON with a non-integer {key}")
    replayed = reply.headers.get("Idempotent-Replayed", "").strip().lower() == "true"
    return Envelope(body, reply.status_code, replayed and api == "v3", dict(reply.headers))


def _error(body: dict[str, Any], reply: requests.Response, *, write: bool) -> B24Error:
    error = error_from_v3(body, reply.status_code, write=write)
    timing = body.get("time") if isinstance(body.get("time"), dict) else {}
    reset_at = body.get("operating_reset_at") or timing.get("operating_reset_at")
    if isinstance(reset_at, (int, float)):
        error.details.setdefault("operating_reset_at", int(reset_at))
    return error
