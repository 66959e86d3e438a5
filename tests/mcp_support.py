"""Driving ``b24-mcp`` the way an MCP host does: the SDK's own client over stdio or HTTP.

``Host`` starts ``scripts/mcp_server.py`` as a subprocess with the sandbox's credentials in its
environment (never in the model's view), keeps the server's stderr in a file so tests can check
it for secrets, and offers ``call(tool, args)`` returning the parsed JSON and the error flag.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from conftest import ROOT, Sandbox
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult

SERVER = ROOT / "skills" / "bitrix24-agent" / "scripts" / "mcp_server.py"

Elicit = Callable[[Any, Any], Awaitable[ElicitResult]]


def answering(action: str, approve: bool = True, asked: list[str] | None = None) -> Elicit:
    """An elicitation callback that answers every question with ``action`` (and records it)."""

    async def answer(_ctx: Any, params: Any) -> ElicitResult:
        if asked is not None:
            asked.append(params.message)
        content = {"approve": approve} if action == "accept" else None
        return ElicitResult(action=action, content=content)

    return answer


def server_env(portal: Sandbox, state: Path, **extra: str) -> dict[str, str]:
    return {"B24_WEBHOOK_URL": portal.webhook_url, "B24_STATE_DIR": str(state), **extra}


@dataclass
class Result:
    """One tool result: the JSON it carries and whether it is a tool error."""

    data: Any
    error: bool
    text: str

    @property
    def code(self) -> str:
        return self.data["error"]["code"] if self.error else ""


def parse(result: Any) -> Result:
    text = result.content[0].text
    return Result(json.loads(text), bool(result.is_error), text)


@dataclass
class Host:
    """An MCP host session against one server subprocess (stdio)."""

    env: dict[str, str]
    folder: Path
    elicit: Elicit | None = None
    mode: str = "auto"
    texts: list[str] = field(default_factory=list)
    #: How the server is started (another user's account: ``runuser -u USER -- python ...``).
    command: list[str] = field(default_factory=lambda: [sys.executable, str(SERVER)])

    @property
    def errlog(self) -> Path:
        return self.folder / "server.stderr"

    def session(self, work: Callable[[Client], Awaitable[Any]]) -> Any:
        """Start the server, run ``work(client)``, stop it; returns what ``work`` returned."""
        command, *args = self.command
        params = StdioServerParameters(
            command=command, args=args, env=self.env, cwd=str(self.folder)
        )

        async def main() -> Any:
            with self.errlog.open("a") as errlog:
                transport = stdio_client(params, errlog=errlog)
                client = Client(transport, mode=self.mode, elicitation_callback=self.elicit)  # type: ignore[arg-type]
                async with client:
                    return await work(client)

        return anyio.run(main)

    async def call(self, client: Client, tool: str, arguments: dict[str, Any]) -> Result:
        result = parse(await client.call_tool(tool, arguments))
        self.texts.append(result.text)
        return result

    def one(self, tool: str, arguments: dict[str, Any]) -> Result:
        """One tool call in its own session."""
        return self.session(lambda client: self.call(client, tool, arguments))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HttpServer:
    """``mcp_server.py --http 127.0.0.1:PORT`` as a subprocess, stopped by ``stop``."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.errlog = folder / "http-server.stderr"
        with self.errlog.open("w") as errlog:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVER), "--http", f"127.0.0.1:{self.port}"],
                env={**os.environ, **env},
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errlog,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the HTTP server did not start: {self.errlog.read_text()[-500:]}")

    def client(self, token: str | None, **kwargs: Any) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=60)
        return Client(streamable_http_client(self.url, http_client=http), **kwargs)

    def stop(self) -> str:
        """Stop the server; returns what it wrote on stdout (nothing, over HTTP)."""
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out.decode("utf-8", "replace")
