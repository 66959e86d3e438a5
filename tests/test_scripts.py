"""What every script keeps, whoever runs it: ``--version``, a closed stdout ends the run quietly,
and one list of runtime packages (requirements.txt) that pyproject.toml and each script's PEP
723 header (for ``uv run``) repeat exactly."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from b24agent import __version__
from b24agent.dependencies import DISTRIBUTIONS
from cli_support import Cli
from conftest import ROOT, Sandbox
from test_worker_support import worker_env

SCRIPTS = ROOT / "skills" / "bitrix24-agent" / "scripts"
CLIENT, WORKER, SANDBOX, MCP = (
    SCRIPTS / name
    for name in (
        "bitrix24_client.py",
        "offline_sync_worker.py",
        "sandbox_portal.py",
        "mcp_server.py",
    )
)
#: PEP 723's reference regular expression for an embedded metadata block.
PEP_723 = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


def requirements(name: str = "requirements.txt") -> list[str]:
    lines = (SCRIPTS / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


#: What each script's PEP 723 header must list: the sandbox is standard library only, and only
#: the MCP server needs the mcp SDK.
NEEDS = {
    CLIENT: requirements(),
    WORKER: requirements(),
    SANDBOX: [],
    MCP: requirements() + requirements("requirements-mcp.txt"),
}


def closed_stdout(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run with a stdout whose reader has already gone, as after ``| head`` finished."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            args, stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, timeout=120
        )
    finally:
        os.close(write)


# --- one list of packages ------------------------------------------------------------------------


@pytest.mark.parametrize("script", NEEDS, ids=lambda p: p.name)
def test_pep_723_headers_repeat_the_requirements_files(script: Path) -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    (block,) = [m for m in PEP_723.finditer(script.read_text()) if m["type"] == "script"]
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in block["content"].splitlines(keepends=True)
    )
    header = tomllib.loads(content)
    assert header["dependencies"] == NEEDS[script]
    assert header["requires-python"] == ">=3.10"


def test_the_installed_distribution_declares_the_requirements_files() -> None:
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    everything = NEEDS[MCP]
    declared = {str(Requirement(r)) for r in requires("bitrix24-agent") or [] if ";" not in r}
    assert declared == {str(Requirement(r)) for r in everything}
    assert version("bitrix24-agent") == __version__
    names = {re.split(r"[<>=!~\[]", r)[0].lower() for r in everything}
    assert names == set(DISTRIBUTIONS.values()), "dependencies.py names every runtime package"


@pytest.mark.parametrize(
    ("version", "code"), [("2.5.0", "DEPENDENCY_TOO_OLD"), ("3.0.0", "DEPENDENCY_TOO_NEW")]
)
def test_an_urllib3_outside_2_6_to_3_is_refused_before_anything_is_sent(
    portal: Sandbox, tmp_path: Path, version: str, code: str
) -> None:
    """The answer cap (B24_MAX_ANSWER_MB) holds only with urllib3 2.6+ (review6 L7), and the
    answer deadline hooks urllib3 2's connection classes (rest/pools.py): an older urllib3,
    which a pip that kept what was there may leave, or a new major version, is a configuration
    error, exit 4, with the install line, before the request leaves. (The version is faked:
    the installed urllib3 reporting another, set by a sitecustomize before our code runs.)"""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(f"import urllib3\nurllib3.__version__ = '{version}'\n")
    cli = Cli.on_webhook(portal, tmp_path)
    run = cli("user.current", PYTHONPATH=str(fake))
    assert run.code == 4, run.err
    error = run.error()
    assert error["code"] == code, error
    assert f"urllib3 {version}" in error["message"] and "requirements.txt" in error["hint"]
    assert portal.stats()["by_method"].get("user.current", 0) == 0
    assert cli("user.current").code == 0  # the real urllib3 (2.6 up to 3) passes


# --- --version -----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", NEEDS, ids=lambda p: p.name)
def test_every_script_prints_its_version(script: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"bitrix24-agent {__version__}\n", "")


# --- a closed stdout -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--list-packs",),
        ("--explain", "crm.lead.add", "crm.deal.list"),
        ("crm.lead.list", "--output", "jsonl"),
        ("--version",),
    ],
)
def test_client_with_a_closed_stdout_ends_quietly(
    args: tuple[str, ...], portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 60})
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})
    done = closed_stdout([sys.executable, str(CLIENT), *args], cli.env, cli.cwd)
    assert (done.returncode, done.stderr) == (0, "")


def test_worker_with_a_closed_stdout_ends_quietly(portal: Sandbox, tmp_path: Path) -> None:
    """The summary line has no reader; the drain itself finished and says so by exit 0."""
    env = worker_env(portal, tmp_path / "state")
    sink = tmp_path / "sink.jsonl"
    args = [sys.executable, str(WORKER), "--drain", "--sink", str(sink), "--log-level", "warning"]
    done = closed_stdout(args, env, ROOT)
    assert (done.returncode, done.stderr) == (0, "")


def test_sandbox_with_a_closed_stdout_keeps_serving(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.Popen(
        [sys.executable, str(SANDBOX), "--port", str(port)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/rest/1/x/user.current", timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "sandbox not serving"
                time.sleep(0.1)
        assert "error" in json.loads(answer.text)  # the portal answers: a bad webhook
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")
