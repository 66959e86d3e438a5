"""An answer that trickles in (review6 L5): B24_READ_TIMEOUT bounds each read from the socket,
so a portal or proxy sending a byte now and then held a call for as long as it liked.
B24_ANSWER_TIMEOUT bounds the whole answer: past it the connection is cut and the call fails
as a server fault after sending: a write is exit 7 ("may have run", sent once, never resent),
a read is exit 6 (transient).

The portal here is the sandbox behind a small proxy that passes each answer's headers on at
once and then its body a byte every GAP seconds: a 200-byte answer takes half a minute, the
deadline is a second and a half.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cli_support import Cli
from conftest import Sandbox

#: Seconds between two bytes of an answer's body.
GAP = 0.15
DEADLINE = "1.5"


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)


class TrickleFront:
    """Plain HTTP on 127.0.0.1 in front of the sandbox: each request goes through as it is;
    each answer's status line and headers come back at once, its body a byte every GAP s."""

    def __init__(self, backend_port: int) -> None:
        self._backend = backend_port
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
            while b"\r\n\r\n" not in head:
                chunk = backend.recv(65536)
                if not chunk:
                    return
                head += chunk
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


@pytest.fixture
def slow_cli(portal: Sandbox, tmp_path: Path) -> Cli:
    port = urlsplit(portal.url).port
    assert port is not None
    front = TrickleFront(port)
    webhook = portal.webhook_url.replace(f":{port}/", f":{front.port}/", 1)
    return Cli(tmp_path, {"B24_WEBHOOK_URL": webhook, "B24_ANSWER_TIMEOUT": DEADLINE})


def test_a_write_whose_answer_trickles_is_cut_and_may_have_run(
    portal: Sandbox, slow_cli: Cli
) -> None:
    params = json.dumps({"fields": {"TITLE": "trickled"}})
    run = slow_cli("crm.lead.add", "--params", params, "--confirm-write", B24_SERVER="off")
    assert run.code == 7, run.err  # the old code waited the half minute out: exit 0
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and not error["retryable"], error
    assert "1.5 s" in error["message"]
    leads = portal.rest("crm.lead.list", {"filter": {"TITLE": "trickled"}}).json()["result"]
    assert len(leads) == 1  # it ran: "safe to repeat" would write it twice
    assert portal.stats()["by_method"]["crm.lead.add"] == 1  # and it was not resent


def test_a_read_whose_answer_trickles_is_cut_as_transient(portal: Sandbox, slow_cli: Cli) -> None:
    """Through the warm server (a forked worker keeps its own deadline keeper)."""
    run = slow_cli("user.current", B24_MAX_RETRIES="1")
    assert run.code == 6, run.err
    error = run.error()
    assert error["code"] == "ANSWER_TIMEOUT" and error["retryable"], error
    assert portal.stats()["by_method"]["user.current"] == 2  # a read is retried, then given up


@pytest.mark.parametrize("value", ["1e10", "86401"])
def test_an_answer_timeout_past_a_day_is_refused_not_a_dead_deadline_keeper(
    portal: Sandbox, tmp_path: Path, value: str
) -> None:
    """A wait past the thread library's limit (about 9e9 s) killed the deadline keeper with a
    traceback, and no later deadline of the process was kept; past a day is refused now."""
    cli = Cli.on_webhook(portal, tmp_path)
    run = cli.with_env(B24_ANSWER_TIMEOUT=value)("user.current")
    assert run.code == 4, run.err
    assert len(run.err.strip().splitlines()) == 1 and "Traceback" not in run.err
    assert "B24_ANSWER_TIMEOUT" in run.err
    assert cli.with_env(B24_ANSWER_TIMEOUT="86400")("user.current").code == 0
