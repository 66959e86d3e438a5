"""The standalone b24-mcp's refusals and spilled answers (review7 L2, L7), through the SDK's
stdio client against the sandbox: a refusal is a clear tool error and a line in the operator's
audit, and an answer saved to a file is masked with the tokens the server holds now."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from b24agent.rest.auth import token_store_path
from client_support import oauth_env, settings_for
from conftest import Sandbox
from mcp_support import Host, server_env


def _audit(state: Path) -> list[dict[str, Any]]:
    (log,) = state.glob("*/audit.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_plan_batch_with_params_not_an_object_is_a_clear_tool_error(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Before, ``dict("abc")`` raised outside the tool's frame: the SDK's bare "Error executing
    tool b24_plan_batch" (no code, no hint) and a traceback in the server's log."""
    host = Host(server_env(portal, tmp_path / "state"), tmp_path)
    calls = [
        {"method": "crm.lead.add", "params": {"fields": {"TITLE": "fine"}}},
        {"method": "crm.lead.add", "params": "abc"},
    ]

    async def work(client: Any) -> Any:
        return await client.call_tool("b24_plan_batch", {"calls": calls})

    result = host.session(work)
    text = result.content[0].text
    assert result.is_error and text.startswith("{"), text
    error = json.loads(text)["error"]
    assert error["code"] == "INVALID_PARAMS", error
    assert "call 2" in error["message"] and "params" in error["message"], error
    assert "Traceback" not in host.errlog.read_text()
    assert portal.stats()["by_method"].get("crm.lead.add", 0) == 0


def test_a_write_refused_by_b24_call_is_in_the_operators_audit(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Before, READS_ONLY was decided before the pipeline: an agent probing writes through
    b24_call left no line (only the read was audited)."""
    state = tmp_path / "state"
    host = Host(server_env(portal, state), tmp_path)
    batch = {"halt": 1, "cmd": {"a": "user.current", "b": "crm.lead.delete?id=1"}}

    async def work(client: Any) -> Any:
        return [
            await host.call(client, "b24_call", {"method": "user.current"}),
            await host.call(client, "b24_call", {"method": "crm.lead.delete", "params": {"id": 1}}),
            await host.call(client, "b24_call", {"method": "batch", "params": batch}),
        ]

    read, delete, in_batch = host.session(work)
    assert not read.error and delete.code == in_batch.code == "READS_ONLY", (delete, in_batch)
    lines = [(line["method"], line["outcome"], line.get("error")) for line in _audit(state)]
    assert lines == [
        ("user.current", "ok", None),
        ("crm.lead.delete", "refused", "READS_ONLY"),
        ("batch", "refused", "READS_ONLY"),
    ]
    refused = _audit(state)[1]
    assert refused["risk"] == "destructive" and refused["exit_code"] == 3
    assert refused["origin"]["tool"] == "b24_call"
    assert "crm.lead.delete" not in portal.stats()["by_method"]


def test_an_answer_saved_to_a_file_is_masked_with_the_refreshed_token(
    portal: Sandbox, tmp_path: Path
) -> None:
    """The server starts with the environment's token pair; the portal expires it, the first
    call refreshes it, and a record that echoes the new access token is read back too big to
    return. Before, the file was masked with the start-up secrets only and held the token."""
    state = tmp_path / "state"
    host = Host({**oauth_env(portal, state), "B24_MCP_EXPORT_DIR": str(tmp_path / "x")}, tmp_path)
    portal.admin("expire-tokens", {})
    store = token_store_path(settings_for(portal, state, oauth=True))

    async def work(client: Any) -> Any:
        me = await host.call(client, "b24_call", {"method": "user.current"})
        assert not me.error, me.text
        token = json.loads(store.read_text())["access_token"]
        assert token != portal.oauth["access_token"]  # refreshed since the server started
        fields = {"TITLE": "echo", "COMMENTS": f"{token} " + "x" * 70_000}
        lead = portal.rest("crm.lead.add", {"fields": fields}).json()["result"]
        got = await host.call(
            client, "b24_call", {"method": "crm.lead.get", "params": {"id": lead}}
        )
        return token, got

    token, got = host.session(work)
    assert not got.error and token not in got.text, got.text[:300]
    saved = Path(got.data["truncated"]["saved_to"]).read_text()
    assert "x" * 1000 in saved and token not in saved
    assert "***" in saved


def _made_here(folder: Path, name: str, size: int, age_s: float) -> Path:
    """A file as ExportFolder names it, ``size`` bytes, last written ``age_s`` ago."""
    path = folder / name
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_export_folder_keeps_to_its_budget(portal: Sandbox, tmp_path: Path) -> None:
    """review7 L4: every b24_export and spilled answer added a file, on the disk of the token
    store and the audit chain, and none was ever removed. With B24_MCP_EXPORT_MAX_MB=1: files
    older than a week and a killed server's stale .part go, the oldest go while the folder is
    past its budget, a file that alone would pass it is refused and removed; a file the folder
    did not make is left alone."""
    exports = tmp_path / "exports"
    exports.mkdir(mode=0o700)
    stamp = "20261101T000000Z"
    expired = _made_here(exports, f"answer-{stamp}-0000000a.json", 10, 8 * 86400)
    stale = _made_here(exports, f"crm.lead.list-{stamp}-0000000b.jsonl.part", 10, 2 * 86400)
    older = _made_here(exports, f"answer-{stamp}-0000000c.json", 600_000, 3600)
    newer = _made_here(exports, f"answer-{stamp}-0000000d.json", 600_000, 60)
    notes = _made_here(exports, "notes.txt", 10, 30 * 86400)
    env = {"B24_MCP_EXPORT_DIR": str(exports), "B24_MCP_EXPORT_MAX_MB": "1"}
    host = Host(server_env(portal, tmp_path / "state", **env), tmp_path)
    portal.admin("seed", {"crm.lead": 10})
    small = host.one("b24_export", {"method": "crm.lead.list"})
    assert not small.error and small.data["rows"] == 10, small.text
    assert [p.exists() for p in (expired, stale, older, newer, notes)] == [0, 0, 0, 1, 1]

    portal.admin("seed", {"crm.lead": 6000})
    big = host.one("b24_export", {"method": "crm.lead.list"})
    assert big.error and big.code == "EXPORT_TOO_LARGE", big.text[:300]
    assert not list(exports.glob("*.part"))
    held = sum(p.stat().st_size for p in exports.iterdir())
    assert held <= 1 << 20, held
