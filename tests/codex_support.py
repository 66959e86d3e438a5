"""The real Codex CLI's skill loader, asked through its app server (``codex app-server``).

``make test`` installs the CLI from npm into ``.venv/node`` (Makefile: CODEX_VERSION). The app
server speaks JSON-RPC, one message a line, on stdin/stdout; ``skills/list`` runs the same
loader a Codex session uses and returns each skill with its ``agents/openai.yaml`` data
(``interface``, ``dependencies``) and every file it rejected with the parser's message.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

CODEX = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "codex"
ANSWER_TIMEOUT_S = 60
CLIENT = {"name": "bitrix24-agent-tests", "version": "0"}


def codex_binary() -> Path:
    """The installed CLI; without it the test skips, unless CI asked for it (then it fails)."""
    if CODEX.exists():
        return CODEX
    message = f"the Codex CLI is not installed at {CODEX}: run `make runtimes` (needs npm)"
    if os.environ.get("CI_REQUIRE_CODEX"):
        pytest.fail(message)
    pytest.skip(message)


def list_skills(home: Path, cwd: Path) -> dict[str, Any]:
    """``skills/list`` as Codex answers it for a user whose home is ``home``: one entry with
    ``skills`` and ``errors``. ``$CODEX_HOME`` is a fresh folder, so nothing of the machine's
    own Codex set-up takes part."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(codex_home)}
    process = subprocess.Popen(
        [str(codex_binary()), "app-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        text=True,
    )
    answers: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            answers.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    try:
        _send(process, {"id": 1, "method": "initialize", "params": {"clientInfo": CLIENT}})
        _answer(answers, 1)
        _send(process, {"method": "initialized"})
        params = {"cwds": [str(cwd)], "forceReload": True}
        _send(process, {"id": 2, "method": "skills/list", "params": params})
        (entry,) = _answer(answers, 2)["result"]["data"]
        return entry
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _send(process: subprocess.Popen[str], message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()


def _answer(answers: queue.Queue[dict[str, Any]], wanted: int) -> dict[str, Any]:
    """The response to request ``wanted``; notifications in between are skipped."""
    while True:
        try:
            message = answers.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"codex app-server did not answer request {wanted}")
        if message.get("id") == wanted:
            assert "error" not in message, message
            return message
