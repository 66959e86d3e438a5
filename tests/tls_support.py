"""TLS in front of the sandbox (which speaks plain HTTP): a self-signed certificate made with
``openssl`` and a small TLS-terminating proxy on 127.0.0.1 that forwards the plain bytes to the
sandbox's port. With ``break_answers`` the proxy forwards each request (the sandbox runs it)
and then, instead of the answer, sends a TLS record the client cannot decrypt: what a portal, a
load balancer or a middlebox that breaks mid-answer looks like to the client."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

#: An application-data record whose 32 bytes decrypt to nothing: the client's TLS layer fails.
BROKEN_RECORD = b"\x17\x03\x03\x00\x20" + b"\x00" * 32


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    done = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return cert, key


def _shut(*ends: socket.socket) -> None:
    """End both directions of each socket, so the thread on the other side stops too."""
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        _shut(source, target)


def _break_answer(backend: socket.socket, client: ssl.SSLSocket) -> None:
    """Wait for the sandbox's answer, then send the client a broken record in its place."""
    try:
        backend.recv(65536)
        raw = socket.socket(fileno=os.dup(client.fileno()))
        raw.sendall(BROKEN_RECORD)
        raw.close()
    except OSError:
        pass
    finally:
        _shut(backend, client)


class TlsFront:
    """Accepts TLS on 127.0.0.1 and forwards the plain bytes to the sandbox's port."""

    def __init__(
        self, backend_port: int, cert: Path, key: Path, *, break_answers: bool = False
    ) -> None:
        self._backend = backend_port
        self._answer = _break_answer if break_answers else _pipe
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(raw,), daemon=True).start()

    def _connect(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        backend = socket.create_connection(("127.0.0.1", self._backend))
        threading.Thread(target=self._answer, args=(backend, client), daemon=True).start()
        _pipe(client, backend)

    def close(self) -> None:
        self._listener.close()
