"""The vendor's JS SDK (``@bitrix24/b24jssdk`` from npm, unmodified) works against the sandbox.

It insists on https, so the test puts TLS in front of the sandbox (tls_support.py): a
self-signed certificate (trusted by node through NODE_EXTRA_CA_CERTS) and a small TLS-terminating
proxy on 127.0.0.1. The SDK then runs v2 ``callMethod``, ``callListMethod``, ``callBatch`` and
REST 3.0 ``call``, ``callList``, ``batch`` (tests/peers/b24jssdk_peer.mjs); the test checks what
it printed against the portal. ``make test`` (and ``make peers``) installs the pinned SDK into
``.venv/node`` with npm; without node, the SDK or openssl the test skips, and fails instead in CI
(``.ci/run`` installs them and sets CI_REQUIRE_PEERS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Sandbox
from tls_support import TlsFront, certificate

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


@pytest.fixture
def https_portal(portal: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, str, Path]]:
    cert, key = certificate(tmp_path)
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
