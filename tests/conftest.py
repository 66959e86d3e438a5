"""Shared fixtures: every test talks real HTTP to a sandbox portal subprocess on 127.0.0.1.

- ``sandbox_proc`` (session): one ``sandbox_portal.py --port 0 --plan unlimited`` for the run.
- ``portal`` (function): the same sandbox after an admin ``reset``, so each test starts clean.
- ``start_sandbox`` (function): factory for a separate sandbox with other flags
  (``start_sandbox("--plan", "standard")``); each one is stopped when the test ends.

All three hand out a ``Sandbox``: ``url``, ``webhook_url``, ``webhook``, ``oauth``,
``admin_token``, ``admin(op, payload)``, ``stats()`` and ``rest(method, params, http=...)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from b24agent.encoding import encode_query
from hypothesis import HealthCheck, settings

#: Two cores shared by parallel runs: slow input generation is load, not a defect of a strategy.
settings.register_profile("shared-cores", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-cores")

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_SCRIPT = ROOT / "skills" / "bitrix24-agent" / "scripts" / "sandbox_portal.py"
#: Admin operations read with GET; every other one is a POST.
ADMIN_READS = frozenset({"stats", "settings", "events-delivered"})
START_TIMEOUT_S = 30
#: This run's own folder for b24's warm servers (README "The warm server"): tests never reach a
#: developer's server or another run's. Short, because a socket path must fit in 100 bytes.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="b24rt-")


@dataclass
class Sandbox:
    """A running sandbox portal and the credentials from its start-up line."""

    process: subprocess.Popen[str]
    url: str
    webhook_url: str
    webhook: dict[str, Any]
    oauth: dict[str, Any]
    admin_token: str
    session: requests.Session = field(default_factory=requests.Session)

    def admin(self, op: str, payload: dict[str, Any] | None = None) -> Any:
        """Call ``/_sandbox/<op>``; fails the test on a non-200 answer."""
        verb = "GET" if op in ADMIN_READS and payload is None else "POST"
        response = self.session.request(
            verb,
            f"{self.url}/_sandbox/{op}",
            json=payload if verb == "POST" else None,
            headers={"X-Sandbox-Admin": self.admin_token},
            timeout=30,
        )
        assert response.status_code == 200, f"admin {op}: {response.status_code} {response.text}"
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self.admin("stats")

    def sent(self, method: str) -> int:
        """How many requests for ``method`` the portal has received."""
        return self.stats()["by_method"].get(method, 0)

    def once_sent(self, method: str, action: Callable[[], object]) -> threading.Thread:
        """Run ``action`` in a thread as soon as the portal holds a request for ``method`` (its
        answer delayed): a fixed pause fires before a slow start-up has sent anything."""

        def wait_then_act() -> None:
            deadline = time.monotonic() + 60
            while self.sent(method) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            action()

        thread = threading.Thread(target=wait_then_act, daemon=True)
        thread.start()
        return thread

    def lead_titles(self, part: str) -> list[str]:
        """The TITLE of every lead whose title holds ``part``, all pages (one per lead)."""
        titles: list[str] = []
        start: int | None = 0
        while start is not None:
            body = self.rest(
                "crm.lead.list", {"filter": {"%TITLE": part}, "select": ["TITLE"], "start": start}
            ).json()
            titles.extend(row["TITLE"] for row in body["result"])
            start = body.get("next")
        return titles

    def rest(
        self, method: str, params: dict[str, Any] | None = None, *, http: str = "post_json"
    ) -> requests.Response:
        """One webhook call. ``http``: ``post_json`` (JSON body), ``post_form`` (PHP bracket
        form body) or ``get`` (PHP bracket query string)."""
        url = self.webhook_url + method
        if http == "post_json":
            return self.session.post(url, json=params or {}, timeout=30)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if http == "post_form":
            return self.session.post(
                url, data=encode_query(params or {}), headers=headers, timeout=30
            )
        if http == "get":
            query = encode_query(params or {})
            return self.session.get(f"{url}?{query}" if query else url, timeout=30)
        raise ValueError(f"unknown http mode {http}")

    def stop(self) -> None:
        self.session.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(*args: str) -> Sandbox:
    """Start a sandbox subprocess and wait for its JSON start-up line. It ignores Bearer
    headers, so every OAuth test passes only by sending the token the documented way (the
    ``auth`` parameter); a test of the header turns ``bearer_header`` on through admin settings.
    """
    process = subprocess.Popen(
        [sys.executable, str(SANDBOX_SCRIPT), "--port", "0", "--ignore-bearer", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not box or not box[0].strip():
        process.kill()
        process.wait()
        pytest.fail(f"sandbox did not start (exit code {process.returncode})")
    info = json.loads(box[0])
    return Sandbox(
        process=process,
        url=info["url"],
        webhook_url=info["webhook_url"],
        webhook=info["webhook"],
        oauth=info["oauth"],
        admin_token=info["admin_token"],
    )


@pytest.fixture(scope="module")
def accounts() -> Iterator[Any]:
    """The broker tests' second and third OS users (broker_support.Accounts), made once per
    module that asks for them and removed after it."""
    from broker_support import Accounts

    made = Accounts.create()
    yield made
    made.remove()


@pytest.fixture(scope="session")
def sandbox_proc() -> Iterator[Sandbox]:
    sandbox = launch("--plan", "unlimited")
    yield sandbox
    sandbox.stop()


@pytest.fixture
def portal(sandbox_proc: Sandbox) -> Sandbox:
    sandbox_proc.admin("reset")
    return sandbox_proc


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(*args: str) -> Sandbox:
        sandbox = launch(*args)
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


def ok(response: requests.Response) -> Any:
    """The ``result`` of a successful v2 answer (asserts HTTP 200 and no error body)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert "error" not in body, body
    return body["result"]


def fails(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error answer with this status and code (v2 string or v3 object form)."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert (error["code"] if isinstance(error, dict) else error) == code, body
    return body


def write_env(path: Path, text: str) -> Path:
    """An env file the way an operator keeps one: this user's, mode 0600 (b24agent/envfile.py
    refuses one that others may write, or read while it holds a secret)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


#: A stuck writer: holds the filelock named on its command line until its stdin closes.
_LOCK_HOLDER = (
    "import sys\n"
    "from filelock import FileLock\n"
    "lock = FileLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextlib.contextmanager
def lock_held_elsewhere(lock_file: Path) -> Iterator[None]:
    """``lock_file`` (a filelock) held by another process, as a stuck writer holds it, until
    the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def signal_once_answered(
    portal: Sandbox, method: str, start: Callable[[], subprocess.Popen[str]], signum: int
) -> tuple[subprocess.Popen[str], str, str, float]:
    """``start()`` a call of ``method``; once the portal has it and a second has passed (its
    answer in), send ``signum``. The process, its stdout and stderr, and how many seconds it
    took to end after the signal."""
    before = portal.sent(method)
    proc = start()
    while portal.sent(method) == before:
        time.sleep(0.02)
    time.sleep(1.0)
    signalled = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    return proc, out, err, time.monotonic() - signalled
