"""An answer that trickles in (review6 L5): B24_READ_TIMEOUT bounds each read from the socket,
so a portal or proxy sending a byte now and then held a call for as long as it liked.
B24_ANSWER_TIMEOUT bounds the whole answer, from the moment the request leaves: status line,
headers, any number of ``100 Continue`` and the body. Past it the connection is cut and the call
fails as a server fault after sending: a write is exit 7 ("may have run", sent once, never
resent), a read is exit 6 (transient).

The portal here is the sandbox behind a small proxy: each request reaches the sandbox (the call
runs), and its answer comes back slowly: the body a byte every GAP seconds (a 200-byte answer
takes half a minute), or the head never ends (a header line, or a ``100 Continue``, every
HEAD_GAP seconds). The deadline is a second and a half. The old code armed the deadline only
once it had the headers: a trickled head held a call for as long as the proxy liked.

Two edges of the deadline follow: a TLS handshake that never ends (nothing was sent: exit 6),
and an answer that arrived whole before its deadline but is decoded past it (neither a timeout
nor a reason to cut its connection, which is back in the pool by then).
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from b24agent.errors import B24Error
from b24agent.rest.client import Bitrix24Client
from cli_support import Cli
from client_support import settings_at, settings_for
from conftest import Sandbox

#: Seconds between two bytes of an answer's body.
GAP = 0.15
#: Seconds between two pieces of a head that never ends (a header line, a ``100 Continue``):
#: each well within the read timeout, so only the answer's deadline can end the wait.
HEAD_GAP = 0.5
DEADLINE = "1.5"
#: "Not held for ever": a call cut at its 1.5 s deadline ends well within this (start-up and a
#: retry included); the old code was still waiting when the bound killed it.
BOUND_S = 12.0


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)


def _endless_head(mode: str) -> Iterator[bytes]:
    if mode == "continue":
        return itertools.repeat(b"HTTP/1.1 100 Continue\r\n\r\n")
    lines = (b"X-Slow-%d: 1\r\n" % n for n in itertools.count())
    return itertools.chain([b"HTTP/1.1 200 OK\r\n"], lines)


class TrickleFront:
    """Plain HTTP on 127.0.0.1 in front of the sandbox: each request goes through as it is;
    the sandbox's answer comes back as ``mode`` says: ``body``: its status line and headers at
    once, its body a byte every GAP s; ``headers``: a status line, then a header line every
    HEAD_GAP s, for ever; ``continue``: ``HTTP/1.1 100 Continue`` every HEAD_GAP s, for ever
    (http.client skips any number of them)."""

    def __init__(self, backend_port: int, mode: str = "body") -> None:
        self._backend = backend_port
        self._mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            client, _ = self._listener.accept()
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        backend = socket.create_connection(("127.0.0.1", self._backend))
        threading.Thread(target=_pipe, args=(client, backend), daemon=True).start()
        try:
            head = b""
            while b"\r\n\r\n" not in head:  # the sandbox has run the call
                chunk = backend.recv(65536)
                if not chunk:
                    return
                head += chunk
            if self._mode != "body":
                for piece in _endless_head(self._mode):
                    client.sendall(piece)
                    time.sleep(HEAD_GAP)
            end = head.index(b"\r\n\r\n") + 4
            client.sendall(head[:end])
            rest = head[end:]
            while rest:
                for byte in rest:
                    client.sendall(bytes([byte]))
                    time.sleep(GAP)
                rest = backend.recv(65536)
        except OSError:
            pass  # the client cut the connection: what the deadline does
        finally:
            for end_ in (client, backend):
                with contextlib.suppress(OSError):
                    end_.close()


def _front_url(portal: Sandbox, mode: str) -> str:
    """The address of a new TrickleFront before ``portal``."""
    port = urlsplit(portal.url).port
    assert port is not None
    return f"http://127.0.0.1:{TrickleFront(port, mode).port}"


def _front_webhook(portal: Sandbox, mode: str) -> str:
    return _front_url(portal, mode) + urlsplit(portal.webhook_url).path


@pytest.fixture
def slow_cli(portal: Sandbox, tmp_path: Path) -> Cli:
    webhook = _front_webhook(portal, "body")
    return Cli(tmp_path, {"B24_WEBHOOK_URL": webhook, "B24_ANSWER_TIMEOUT": DEADLINE})


def _bounded_call(work: Callable[[], Any]) -> Any:
    """``work()``'s result or error, or a failure when it is still running after BOUND_S."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the test below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    if thread.is_alive():
        pytest.fail(f"still waiting for the answer after {BOUND_S:g} s")
    return outcome[0]


def _leads(portal: Sandbox, title: str) -> list[Any]:
    return portal.rest("crm.lead.list", {"filter": {"TITLE": title}}).json()["result"]


def test_a_write_whose_answer_trickles_is_cut_and_may_have_run(
    portal: Sandbox, slow_cli: Cli
) -> None:
    params = json.dumps({"fields": {"TITLE": "trickled"}})
    run = slow_cli("crm.lead.add", "--params", params, "--confirm-write", B24_SERVER="off")
    assert run.code == 7, run.err  # the old code waited the half minute out: exit 0
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and not error["retryable"], error
    assert "1.5 s" in error["message"]
    assert len(_leads(portal, "trickled")) == 1  # it ran: "safe to repeat" would write it twice
    assert portal.stats()["by_method"]["crm.lead.add"] == 1  # and it was not resent


def test_a_read_whose_answer_trickles_is_cut_as_transient(portal: Sandbox, slow_cli: Cli) -> None:
    """Through the warm server (a forked worker keeps its own deadline keeper)."""
    run = slow_cli("user.current", B24_MAX_RETRIES="1")
    assert run.code == 6, run.err
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and error["retryable"], error
    assert portal.stats()["by_method"]["user.current"] == 2  # a read is retried, then given up


@pytest.mark.parametrize("mode", ["headers", "continue"])
def test_a_write_whose_head_never_ends_is_cut_and_may_have_run(
    portal: Sandbox, tmp_path: Path, mode: str
) -> None:
    """The old code waited for the headers without a deadline: still waiting at BOUND_S."""
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": _front_webhook(portal, mode), "B24_SERVER": "off"})
    params = json.dumps({"fields": {"TITLE": f"head {mode}"}})
    run = cli.within(
        BOUND_S, "crm.lead.add", "--params", params, "--confirm-write", B24_ANSWER_TIMEOUT=DEADLINE
    )
    assert run.code == 7, run.err
    assert len(run.err.strip().splitlines()) == 1, run.err
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and not error["retryable"], error
    assert "1.5 s" in error["message"] and "(HTTP" not in error["message"], error["message"]
    assert len(_leads(portal, f"head {mode}")) == 1  # it ran, once: never resent
    assert portal.sent("crm.lead.add") == 1


def test_a_read_whose_head_never_ends_is_cut_through_the_warm_server(
    portal: Sandbox, tmp_path: Path
) -> None:
    """A forked worker of the warm server watches the connection from before sending too."""
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": _front_webhook(portal, "continue")})
    run = cli.within(BOUND_S, "user.current", B24_ANSWER_TIMEOUT=DEADLINE, B24_MAX_RETRIES="1")
    assert run.code == 6, run.err
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and error["retryable"], error
    assert portal.sent("user.current") == 2  # a read is retried, then given up


def test_the_library_cuts_a_head_that_never_ends(portal: Sandbox, tmp_path: Path) -> None:
    settings = settings_at(
        _front_webhook(portal, "headers"), tmp_path, answer_timeout=1.5, max_retries=1
    )
    with Bitrix24Client(settings) as client:
        outcome = _bounded_call(lambda: client.call("user.current"))
    assert isinstance(outcome, B24Error), outcome
    assert outcome.code == "ANSWER_TIMEOUT" and outcome.retryable, outcome
    assert portal.sent("user.current") == 2  # retried as a read, then given up


def test_a_token_refresh_whose_head_never_ends_is_cut(portal: Sandbox, tmp_path: Path) -> None:
    """The token server's exchange is watched from before sending too (rest/auth.py)."""
    front = _front_url(portal, "continue")
    settings = settings_for(
        portal, tmp_path, oauth=True, oauth_server=front, answer_timeout=1.5, max_retries=0
    )
    portal.admin("expire-tokens", {})
    with Bitrix24Client(settings) as client:
        outcome = _bounded_call(lambda: client.call("user.current"))
    assert isinstance(outcome, B24Error), outcome
    assert outcome.code == "TOKEN_SERVER_UNREACHABLE" and outcome.retryable, outcome


def test_a_parallel_batch_whose_heads_never_end_is_cut_batch_by_batch(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Three batches at once, each on its own pooled connection, each cut at its deadline:
    every write in them may have run (outcome unknown), none is resent."""
    settings = settings_at(_front_webhook(portal, "continue"), tmp_path, answer_timeout=1.5)
    calls = [("crm.lead.add", {"fields": {"TITLE": f"parallel {n}"}}) for n in range(150)]
    with Bitrix24Client(settings) as client:
        outcomes = _bounded_call(lambda: list(client.call_many(calls, parallel=3)))
    assert not isinstance(outcomes, BaseException), outcomes
    codes = {outcome.error.code for outcome in outcomes if outcome.error is not None}
    assert len(outcomes) == 150 and codes == {"ANSWER_TIMEOUT"}, codes
    assert all(not outcome.error.retryable for outcome in outcomes)
    assert portal.sent("batch") == 3


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        ({"B24_ANSWER_TIMEOUT": DEADLINE}, "ANSWER_TIMEOUT"),
        ({"B24_CONNECT_TIMEOUT": "1"}, "CONNECTION_FAILED"),
    ],
)
def test_a_write_whose_tls_handshake_stalls_was_not_sent(
    tmp_path: Path, limit: dict[str, str], code: str
) -> None:
    """A portal that takes the connection and never answers the TLS handshake: the answer
    deadline, or the connect timeout (urllib3 reports that one as a *read* timeout), ends it.
    None of the request was written, so the write provably did not run: exit 6, retryable, as
    for any failed handshake. The old code waited B24_CONNECT_TIMEOUT out and then called the
    write "may have run" (exit 7) in both cases."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    webhook = f"https://127.0.0.1:{silent.getsockname()[1]}/rest/1/webhookcode0001/"
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": webhook, "B24_SERVER": "off", **limit})
    params = json.dumps({"fields": {"TITLE": "never sent"}})
    with silent:
        run = cli.within(
            BOUND_S, "crm.lead.add", "--params", params, "--confirm-write", B24_MAX_RETRIES="0"
        )
    assert run.code == 6, run.err
    error = run.error()
    assert error["code"] == code and error["retryable"], error
    assert "not sent" in error["message"], error["message"]


class GzipPortal:
    """Plain keep-alive HTTP on 127.0.0.1 answering every POST at once with one gzip answer
    small on the wire and ``size`` bytes decoded; counts the connections it was given."""

    def __init__(self, size: int) -> None:
        body = json.dumps({"result": "0" * size}).encode()
        packed = gzip.compress(body, 6)
        self._answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
        ) + packed
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            client, _ = self._listener.accept()
            self.connections += 1
            threading.Thread(target=self._answer_all, args=(client,), daemon=True).start()

    def _answer_all(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client, client.makefile("rb") as stream:
            while stream.readline():
                length = 0
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                stream.read(length)
                client.sendall(self._answer)


def test_an_answer_in_whole_before_the_deadline_is_not_a_timeout_nor_its_connection_cut(
    tmp_path: Path,
) -> None:
    """The deadline passes after the last byte arrived but while the answer is still being
    decoded (120 MB from 120 KB of gzip). The old code then reported the whole answer as
    ANSWER_TIMEOUT, and cut the connection urllib3 had already put back in its pool: the next
    call (or another thread of a parallel batch, had it taken it) found it dead."""
    size = 120 * 1024 * 1024
    portal = GzipPortal(size)
    webhook = f"{portal.url}/rest/1/webhookcode0001/"
    settings = settings_at(webhook, tmp_path, answer_timeout=0.15, max_retries=0)
    with Bitrix24Client(settings) as client:
        for _ in range(2):
            assert len(client.call("user.current").result) == size
    assert portal.connections == 1  # the second call went over the first one's connection
