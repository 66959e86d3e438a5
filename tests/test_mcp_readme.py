"""The README's MCP client configurations work as printed, and its MCP tables match --help.

Each client's block (Claude Desktop, Cursor, VS Code, Codex) is parsed the way that client reads
its file (JSON, or TOML for Codex); only the placeholders are filled in: the skill path, the
webhook (VS Code's ``${input:...}`` too) and ``python3`` as this interpreter. The server is then
started from the block with the SDK's stdio client and must list its tools and answer a read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ROOT, Sandbox
from mcp import Client, StdioServerParameters
from mcp_support import parse
from test_readme import README, first_cells, help_exit_codes, help_flags, help_text, readme_section

SKILL = ROOT / "skills" / "bitrix24-agent"
PLACEHOLDER_PATH = "/ABSOLUTE/PATH/TO/skills/bitrix24-agent"
PLACEHOLDER_WEBHOOK = "https://YOUR-PORTAL.bitrix24.com/rest/1/YOUR-WEBHOOK-CODE/"
#: client -> (the heading of its block, where its servers sit in the parsed file)
CLIENTS = {
    "Claude Desktop": ("json", "mcpServers"),
    "Cursor": ("json", "mcpServers"),
    "VS Code": ("json", "servers"),
    "Codex": ("toml", "mcp_servers"),
}


def _block(client: str) -> tuple[str, str]:
    match = re.search(
        rf"^#### {re.escape(client)}\n.*?```(json|toml)\n(.*?)```", README, re.S | re.M
    )
    assert match, f"README has no config block for {client}"
    return match.group(1), match.group(2)


def _server_of(client: str) -> dict[str, Any]:
    kind, text = _block(client)
    expected, key = CLIENTS[client]
    assert kind == expected
    parser = pytest.importorskip("tomllib").loads if kind == "toml" else json.loads
    document = parser(text)
    (server,) = document[key].values()
    if client == "VS Code":
        assert server["type"] == "stdio"
        (prompt,) = document["inputs"]
        assert prompt["password"] is True
    return server


def _filled(value: str, portal: Sandbox) -> str:
    value = value.replace(PLACEHOLDER_PATH, str(SKILL)).replace(
        PLACEHOLDER_WEBHOOK, portal.webhook_url
    )
    return re.sub(r"\$\{input:[\w-]+\}", portal.webhook_url, value)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_each_readme_block_starts_a_working_server(
    client: str, portal: Sandbox, tmp_path: Path
) -> None:
    server = _server_of(client)
    assert server["command"] == "python3"
    env = {k: _filled(v, portal) for k, v in server["env"].items()}
    assert env["B24_WEBHOOK_URL"] == portal.webhook_url and env["B24_APPROVAL"] == "writes"
    params = StdioServerParameters(
        command=sys.executable,
        args=[_filled(arg, portal) for arg in server["args"]],
        env={**env, "B24_STATE_DIR": str(tmp_path / "state")},
        cwd=str(tmp_path),
    )

    async def work() -> Any:
        async with Client(params) as session:
            tools = await session.list_tools()
            return tools, parse(await session.call_tool("b24_call", {"method": "user.current"}))

    tools, me = anyio.run(work)
    assert len(tools.tools) == 7
    assert me.data["result"]["ID"] == str(portal.webhook["user_id"])


def test_the_mcp_flag_and_exit_code_tables_match_help() -> None:
    text = help_text("mcp_server.py")
    documented: list[str] = []
    for cell in first_cells(readme_section("MCP server flags")):
        documented += re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", cell)
    assert set(documented) == help_flags(text) | {"-h"}
    codes = {int(cell) for cell in first_cells(readme_section("MCP server exit codes"))}
    assert codes == help_exit_codes(text)
