"""Running ``bitrix24_client.py`` the way agents do: a subprocess with a private state folder.

Every run is checked against the CLI contract on the way: no traceback, every stderr line is one
JSON object, and a failure ends with the ``{"error": {...}}`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

SCRIPT = ROOT / "skills" / "bitrix24-agent" / "scripts" / "bitrix24_client.py"
ERROR_KEYS = {"code", "message", "hint", "retryable"}


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def error(self) -> dict[str, Any]:
        """The error object of a failed run (the last stderr line)."""
        return json.loads(self.err.strip().splitlines()[-1])["error"]


class Cli:
    """Runs the script from an empty working folder with its own HOME and state folder."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.cwd = tmp_path / "work"
        self.cwd.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
        self.env.update(
            {
                "HOME": str(tmp_path),
                "B24_STATE_DIR": str(self.state),
                "B24_RATE_LIMITER": "memory",
                "B24_RETRY_BASE_SEC": "0.01",
                "B24_RETRY_MAX_SEC": "0.05",
                "B24_SERVER_IDLE_SEC": "30",  # the run's warm servers leave soon after it
                **env,
            }
        )
        self.runs: list[Run] = []

    @classmethod
    def on_webhook(cls, portal: Any, tmp_path: Path) -> Cli:
        """A CLI on ``portal``'s webhook (a conftest.Sandbox), every call in its own process
        (no warm server), so a test sees exactly what one run does."""
        return cls(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off"})

    def with_env(self, **env: str) -> Cli:
        """The same folders and run log, with more variables set."""
        clone = Cli(self.tmp_path, {})
        clone.env = {**self.env, **env}
        clone.runs = self.runs
        return clone

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return self.popen_with(None, *args, **env)

    def popen_with(
        self, preexec: Callable[[], None] | None, *args: str, **env: str
    ) -> subprocess.Popen[str]:
        """``popen`` with ``preexec`` run in the child first (e.g. a resource limit)."""
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            env={**self.env, **env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )

    def finish(self, proc: subprocess.Popen[str], within: float = 120) -> Run:
        """The run of ``proc``; one still running after ``within`` seconds is killed and
        fails the test."""
        try:
            out, err = proc.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"b24 {' '.join(map(str, proc.args))}: still running after {within:g} s")
        run = Run(proc.returncode, out, err)
        check(run)
        self.runs.append(run)
        return run

    def within(self, seconds: float, *args: str, **env: str) -> Run:
        """A run that must end within ``seconds`` (one that hangs fails the test)."""
        return self.finish(self.popen(*args, **env), seconds)

    def __call__(self, *args: str, **env: str) -> Run:
        return self.finish(self.popen(*args, **env))


def check(run: Run) -> None:
    """The output contract every run keeps, whatever it did."""
    assert "Traceback" not in run.err, run.err
    lines = [json.loads(line) for line in run.err.splitlines()]
    assert all(isinstance(line, dict) for line in lines), run.err
    if run.code != 0:
        assert set(run.error()) == ERROR_KEYS, run.err


def lead_creates(path: Path, prefix: str, count: int) -> Path:
    """A batch file of ``count`` crm.lead.add lines titled ``<prefix>-1`` .. ``<prefix>-N``."""
    path.write_text(
        "".join(
            json.dumps({"method": "crm.lead.add", "params": {"fields": {"TITLE": f"{prefix}-{n}"}}})
            + "\n"
            for n in range(1, count + 1)
        )
    )
    return path


#: An export that fills a stdout pipe nobody reads (with 1,500 leads seeded: 670 KB).
FULL_EXPORT = ("crm.lead.list", "--all", "--output", "jsonl", "--params", '{"select":["*"]}')
#: What a pipe holds on Linux before its writer blocks.
PIPE_CAPACITY = 65536


def _unread(proc: subprocess.Popen[str]) -> int:
    """Bytes ``proc`` wrote to its stdout pipe that nobody read yet."""
    import fcntl
    import termios

    held = bytearray(4)
    fcntl.ioctl(proc.stdout, termios.FIONREAD, held)  # type: ignore[arg-type]
    return int.from_bytes(held, sys.byteorder)


def interrupt_when_stdout_full(proc: subprocess.Popen[str], sig: int, within: float = 20) -> Run:
    """Wait until ``proc`` blocks on its full stdout, send ``sig`` and, still not reading,
    wait ``within`` seconds for it to end: its run, asserted to have ended as interrupted by
    then, 130 (Ctrl-C) or 128 + ``sig`` (review7b M-b: an interrupted export waited for its
    stuck printer)."""
    try:
        deadline = time.monotonic() + 60
        while _unread(proc) < PIPE_CAPACITY and proc.poll() is None:
            assert time.monotonic() < deadline, "the export never filled its stdout"
            time.sleep(0.05)
        time.sleep(0.5)  # the printer is now stuck in the full pipe
        assert proc.poll() is None, "the export ended before the signal"
        proc.send_signal(sig)
        code = proc.wait(within)  # stdout still unread
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    expected = 130 if sig == signal.SIGINT else 128 + sig
    assert code == expected, f"{code=} {within} s after signal {sig}: {err=}"
    return Run(code, out, err)
