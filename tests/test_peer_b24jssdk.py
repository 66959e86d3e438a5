"""The vendor's JS SDK (``@bitrix24/b24jssdk`` from npm, unmodified) works against the sandbox.

It insists on https, so the test puts TLS in front of the sandbox: a self-signed certificate made
here with ``openssl`` (trusted by node through NODE_EXTRA_CA_CERTS) and a small TLS-terminating
proxy on 127.0.0.1. The SDK then runs v2 ``callMethod``, ``callListMethod``, ``callBatch`` and
REST 3.0 ``call``, ``callList``, ``batch`` (tests/peers/b24jssdk_peer.mjs); the test checks what
it printed against the portal. ``make test`` (and ``make peers``) installs the pinned SDK into
``.venv/node`` with npm; without node, the SDK or openssl the test skips, and fails instead in CI
(``.ci/run`` installs them and sets CI_REQUIRE_PEERS).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Sandbox

NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"
SDK = NODE_MODULES / "@bitrix24" / "b24jssdk"
SCRIPT = ROOT / "tests" / "peers" / "b24jssdk_peer.mjs"


def _missing() -> str | None:
    absent = [tool for tool in ("node", "openssl") if shutil.which(tool) is None]
    if not SDK.is_dir():
        absent.append(f"the JS SDK in {SDK.relative_to(ROOT)} (make peers)")
    return ", ".join(absent) or None


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = _missing()
    if missing and os.environ.get("CI_REQUIRE_PEERS"):
        pytest.fail(f"needs {missing}")
    if missing:
        pytest.skip(f"needs {missing}")


def _certificate(folder: Path) -> tuple[Path, Path]:
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


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


class TlsFront:
    """Accepts TLS on 127.0.0.1 and forwards the plain bytes to the sandbox's port."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self._backend = backend_port
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
        threading.Thread(target=_pipe, args=(backend, client), daemon=True).start()
        _pipe(client, backend)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def https_portal(portal: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, str, Path]]:
    cert, key = _certificate(tmp_path)
    front = TlsFront(int(portal.url.rsplit(":", 1)[1]), cert, key)
    webhook = (
        f"https://localhost:{front.port}/rest/{portal.webhook['user_id']}/{portal.webhook['code']}"
    )
    yield portal, webhook, cert
    front.close()


def test_vendor_js_sdk_v2_and_v3_calls_lists_and_batches(https_portal, tmp_path: Path) -> None:
    portal, webhook, cert = https_portal
    portal.admin("seed", {"crm.lead": 120})
    # ESM resolves imports from the script's own folder: give it the installed node_modules.
    script = tmp_path / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}
    done = subprocess.run(
        ["node", str(script), webhook], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert portal.webhook["code"] not in done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # v2: a create, every row through the SDK's paging, and a batch with a reference
    assert isinstance(out["v2_add"], int)
    ids = [int(row["ID"]) for row in out["v2_list"]]
    assert len(ids) == 121 and len(set(ids)) == 121 and out["v2_add"] in ids
    assert out["v2_batch"]["fetched_title"] == "JS SDK batch lead"
    lead = portal.rest("crm.lead.get", {"id": out["v2_batch"]["added"]}).json()["result"]
    assert lead["TITLE"] == "JS SDK batch lead"

    # v3: a create, the keyset list (page 0 + id filter), and a JSON-array batch
    first = out["v3_call"]["item"]["id"]
    assert [t["id"] for t in out["v3_list"]] == [first]
    got, added = out["v3_batch"]
    assert got == {"item": {"id": first, "title": "JS SDK task"}}
    assert added["item"]["id"] == first + 1
    stats = portal.stats()
    assert stats["by_method"]["batch"] == 2 and stats["by_method"]["crm.lead.list"] >= 3
    print(
        f"b24jssdk: v2 callMethod, callListMethod ({len(ids)} leads), callBatch with a reference;"
        f" v3 call, callList, batch of 2; {stats['requests']} HTTP requests over TLS"
    )
