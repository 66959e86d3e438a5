"""b24-mcp over streamable HTTP: loopback only, a bearer token or nothing, the same tools.

The server runs as a subprocess (``--http 127.0.0.1:PORT``); the host is the SDK's own
streamable HTTP client. Also: what the server writes (results, stderr, state files) never
holds a secret, over stdio or HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import Sandbox
from mcp_support import SERVER, Host, HttpServer, answering, parse, server_env

TOKEN = "t0k-" + "x7Q" * 12


@pytest.fixture
def http_server(portal: Sandbox, tmp_path: Path) -> Iterator[HttpServer]:
    env = server_env(portal, tmp_path / "state", B24_MCP_TOKEN=TOKEN)
    server = HttpServer(env, tmp_path)
    yield server
    assert server.stop() == ""


def _leads(portal: Sandbox, title: str) -> list[Any]:
    body = portal.rest("crm.lead.list", {"filter": {"TITLE": title}, "select": ["ID"]}).json()
    return body["result"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_with_its_token_the_tools_work_over_http(
    mode: str, http_server: HttpServer, portal: Sandbox
) -> None:
    asked: list[str] = []

    async def work() -> Any:
        client = http_server.client(
            TOKEN, mode=mode, elicitation_callback=answering("accept", asked=asked)
        )
        async with client:
            tools = await client.list_tools()
            me = parse(await client.call_tool("b24_call", {"method": "user.current"}))
            params = {"fields": {"TITLE": f"over http {mode}"}}
            plan = parse(
                await client.call_tool("b24_plan", {"method": "crm.lead.add", "params": params})
            )
            ran = parse(
                await client.call_tool("b24_execute_plan", {"plan_id": plan.data["plan_id"]})
            )
            return tools, me, ran

    tools, me, ran = anyio.run(work)
    assert len(tools.tools) == 7
    assert me.data["result"]["ID"] == str(portal.webhook["user_id"])
    assert not ran.error, ran.text
    assert len(asked) == 1 and len(_leads(portal, f"over http {mode}")) == 1


@pytest.mark.parametrize("token", [None, "wrong-" + "y" * 40])
def test_without_the_token_every_request_is_refused(
    token: str | None, http_server: HttpServer, portal: Sandbox
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "1"},
        },
    }
    answer = httpx2.post(
        http_server.url,
        json=initialize,
        headers={**headers, "Accept": "application/json, text/event-stream"},
    )
    assert answer.status_code == 401
    assert "b24_call" not in answer.text

    async def work() -> None:
        async with http_server.client(token) as client:
            await client.call_tool("b24_call", {"method": "user.current"})

    with pytest.raises(Exception):  # noqa: B017 - the SDK's error type varies by version
        anyio.run(work)
    assert "user.current" not in portal.stats()["by_method"]


@pytest.mark.parametrize(
    ("address", "env", "code", "error"),
    [
        ("0.0.0.0:8765", {"B24_MCP_TOKEN": TOKEN}, 2, "HTTP_NOT_LOOPBACK"),
        ("127.0.0.1:8765", {}, 4, "MCP_TOKEN_MISSING"),
        ("127.0.0.1:8765", {"B24_MCP_TOKEN": "short"}, 4, "CONFIG_INVALID"),
        ("127.0.0.1:8765", {"B24_MCP_TOKEN": "s" * 20}, 4, "MCP_TOKEN_MISSING"),
    ],
)
def test_http_is_refused_off_loopback_or_without_a_token(
    address: str, env: dict[str, str], code: int, error: str, portal: Sandbox, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(SERVER), "--http", address],
        env={"PATH": "/usr/bin:/bin", **server_env(portal, tmp_path / "state", **env)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert json.loads(line)["error"]["code"] == error


def test_no_secret_reaches_a_result_the_server_log_or_a_state_file(
    portal: Sandbox, tmp_path: Path, http_server: HttpServer
) -> None:
    state = tmp_path / "state"
    host = Host(server_env(portal, state), tmp_path, elicit=answering("accept"))
    secret_title = f"echo {portal.webhook['code']} back"

    async def work(client: Any) -> None:
        await host.call(client, "b24_call", {"method": "user.current"})
        await host.call(client, "b24_call", {"method": "crm.lead.add", "params": {}})
        await host.call(client, "b24_call", {"method": "no.such.method"})
        plan = await host.call(
            client, "b24_plan", {"method": "crm.lead.add", "params": {"fields": {"TITLE": "kept"}}}
        )
        await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})
        await host.call(
            client,
            "b24_plan",
            {"method": "crm.lead.add", "params": {"fields": {"TITLE": secret_title}}},
        )
        await host.call(client, "b24_export", {"method": "crm.lead.list"})
        await host.call(client, "b24_execute_plan", {"plan_id": "p-" + "A" * 32})

    host.session(work)

    async def over_http() -> None:
        async with http_server.client(TOKEN) as client:
            host.texts.append(parse(await client.call_tool("b24_packs", {})).text)
            host.texts.append(parse(await client.call_tool("b24_call", {"method": "scope"})).text)

    anyio.run(over_http)
    oauth = portal.oauth
    secrets = [
        portal.webhook["code"],
        portal.admin_token,
        TOKEN,
        *(str(oauth[k]) for k in ("client_secret", "access_token", "refresh_token")),
    ]
    texts = {f"result {n}": text for n, text in enumerate(host.texts)}
    texts["stdio server stderr"] = host.errlog.read_text()
    texts["http server stderr"] = http_server.errlog.read_text()
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" and p.parent.name == "exports" for p in files)
    texts.update({str(p): p.read_text(errors="replace") for p in files})
    leaks = [(where, s[:4]) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []
    assert len(host.texts) == 10
