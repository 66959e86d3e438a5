"""The skill folder copied alone onto a python3 that has none of our packages: the scripts that
need them (client, worker, MCP server) stop with exit 4 and one line naming the package and the
exact install commands; after running the client's, reads and writes work. The sandbox needs no
packages: it runs on the bare python3 and is the portal used here."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import venv
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

SKILL = ROOT / "skills" / "bitrix24-agent"

pytestmark = pytest.mark.slow


def run(python: Path, script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=script.parent.parent.parent,  # the runtime's skills folder, not the skill's own
        timeout=120,
    )


def start_sandbox(python: Path, script: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [str(python), str(script), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    assert line and line[0].strip(), "the sandbox did not start on the bare python"
    return proc, json.loads(line[0])


def test_bare_python_gets_the_install_line_then_reads_and_writes(tmp_path: Path) -> None:
    copy = tmp_path / "skills" / SKILL.name
    shutil.copytree(SKILL, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    scripts = copy / "scripts"
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=True)  # pip and setuptools only
    python = bare / "bin" / "python"
    env = {
        "PATH": f"{bare / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"],  # this run's (conftest.py)
        "B24_SERVER_IDLE_SEC": "5",
    }

    sandbox, portal = start_sandbox(python, scripts / "sandbox_portal.py")
    try:
        env |= {"B24_WEBHOOK_URL": portal["webhook_url"], "B24_STATE_DIR": str(tmp_path / "st")}
        core = f"-r {scripts / 'requirements.txt'}"
        pip_lines = {}
        for script, args, files in (
            ("bitrix24_client.py", ["user.current"], core),
            ("offline_sync_worker.py", ["--drain"], core),
            ("mcp_server.py", [], f"{core} -r {scripts / 'requirements-mcp.txt'}"),
        ):
            done = run(python, scripts / script, *args, env=env)
            assert done.returncode == 4, done.stderr
            (line,) = done.stderr.splitlines()  # one line, no traceback
            error = json.loads(line)["error"]
            assert error["code"] == "DEPENDENCY_MISSING"
            assert "is not installed for" in error["message"]
            pip_line, uv_line, uv_run = error["hint"].split(": ", 1)[1].split("; ")
            assert pip_line == f"{python} -m pip install {files}"
            assert uv_line == f"or with uv: uv pip install --python {python} {files}"
            assert uv_run.startswith(f"or run it as uv run {scripts / script} ...")
            pip_lines[script] = pip_line

        installed = subprocess.run(
            shlex.split(pip_lines["bitrix24_client.py"]),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr[-2000:]

        client = scripts / "bitrix24_client.py"
        me = run(python, client, "user.current", "--output", "result", env=env)
        assert me.returncode == 0, me.stderr
        assert json.loads(me.stdout)["ID"] == str(portal["webhook"]["user_id"])
        params = json.dumps({"fields": {"TITLE": "after the install line"}})
        write = ["crm.lead.add", "--params", params, "--confirm-write", "--output", "result"]
        added = run(python, client, *write, env=env)
        assert added.returncode == 0, added.stderr
        read = ["crm.lead.get", "--params", json.dumps({"id": json.loads(added.stdout)})]
        got = run(python, client, *read, "--output", "result", env=env)
        assert json.loads(got.stdout)["TITLE"] == "after the install line"
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        sandbox.stdout.close()


def test_uv_runs_a_bare_copy_from_its_pep_723_header(tmp_path: Path) -> None:
    """No install step at all: uv reads the script's header, builds an environment with those
    packages, and the call works (here against a sandbox the same way)."""
    uv = Path(sys.executable).parent / "uv"
    copy = tmp_path / "skills" / SKILL.name
    shutil.copytree(SKILL, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    scripts = copy / "scripts"
    base = Path(sys.base_prefix) / "bin" / "python3"
    sandbox, portal = start_sandbox(base, scripts / "sandbox_portal.py")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_NATIVE_TLS": "1",  # the machine's certificates, as pip uses them
        "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"],
        "B24_SERVER_IDLE_SEC": "5",
        "B24_WEBHOOK_URL": portal["webhook_url"],
        "B24_STATE_DIR": str(tmp_path / "st"),
    }
    try:
        client = scripts / "bitrix24_client.py"
        done = subprocess.run(
            [str(uv), "run", "--no-config", "--python", str(base), str(client), "user.current",
             "--output", "result"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["ID"] == str(portal["webhook"]["user_id"])
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        sandbox.stdout.close()
