"""The offline worker through the broker (README "The broker"), as its own OS user.

The operator's broker holds the OAuth app's credentials and names the worker's user in
``B24_BROKER_DRAINERS``; the worker runs with ``B24_BROKER`` and ``B24_DOMAIN`` only, keeps its
checkpoint and sink in its own folder and drains the queue without a person approving each call
(the broker's ``B24_APPROVAL=writes`` holds everything else). The agent, a user the operator did
not name, cannot reserve, clear or flag a single row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from b24agent.broker.service import MAX_CALLS, RESERVED_CALLS
from broker_support import (
    PATH,
    PYTHON,
    Accounts,
    Agent,
    Broker,
    brokered_worker_env,
    can_make_users,
    hold_calls,
    oauth_broker,
)
from cli_support import SCRIPT
from conftest import Sandbox
from test_worker_support import (
    WORKER_SCRIPT,
    error_of,
    jsonl,
    queue_rows,
    seed_events,
    summary_of,
    wait_for_lines,
)

pytestmark = pytest.mark.skipif(not can_make_users(), reason="needs root and useradd")

EVENTS = 120


@pytest.fixture
def broker(accounts: Accounts, portal: Sandbox) -> Iterator[Broker]:
    started = oauth_broker(accounts, portal, "drain")
    yield started
    started.stop()


def _secrets(portal: Sandbox) -> list[str]:
    return [portal.oauth[key] for key in ("access_token", "refresh_token", "client_secret")]


def _worker(
    accounts: Accounts, broker: Broker, portal: Sandbox, *args: str, who: str = "worker"
) -> subprocess.Popen[str]:
    """``offline_sync_worker.py ARGS`` as the worker's user (or the agent's), holding no
    credential: the broker's socket and the portal's address, nothing else."""
    assert PYTHON is not None
    home = accounts.worker_home if who == "worker" else accounts.agent_home
    account = accounts.as_worker() if who == "worker" else accounts.as_agent()
    return subprocess.Popen(
        [PYTHON[0], str(WORKER_SCRIPT), *args],
        env=brokered_worker_env(broker, portal, home),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **account,
    )


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_the_named_worker_drains_through_the_broker_holding_no_secret(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    ids = seed_events(portal, EVENTS)
    sink = accounts.worker_home / "inbox.jsonl"
    worker = _worker(
        accounts, broker, portal, "--sleep", "0.5", "--limit", "50", "--sink", str(sink)
    )
    try:
        assert wait_for_lines(sink, EVENTS, worker, timeout=120) == EVENTS, worker.stderr
        time.sleep(0.5)  # the last reservation's clear
        held = {
            part: Path(f"/proc/{worker.pid}/{part}").read_bytes() for part in ("environ", "cmdline")
        }
    finally:
        worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    summary = summary_of(out)
    assert summary["reserved"] == summary["handled"] == summary["cleared"] == EVENTS
    assert summary["dead_lettered"] == 0
    assert sorted(str(line["event"]["ID"]) for line in jsonl(sink)) == sorted(ids)
    assert queue_rows(portal) == []
    # The worker's process and everything it wrote hold none of the app's secrets.
    written = (
        out
        + err
        + "".join(
            path.read_text(errors="replace")
            for path in accounts.worker_home.rglob("*")
            if path.is_file()
        )
    )
    for secret in _secrets(portal):
        assert all(secret.encode() not in text for text in held.values())
        assert secret not in written
    # The broker's keyed audit names the worker's uid on every queue call it ran.
    queue_lines = [
        line for line in broker.audit_lines() if line["method"].startswith("event.offline.")
    ]
    assert {line["origin"]["uid"] for line in queue_lines} == {_uid(accounts.worker)}
    assert {line["method"] for line in queue_lines} >= {"event.offline.get", "event.offline.clear"}
    assert all(line["outcome"] == "ok" for line in queue_lines)
    assert broker.operator_cli("--verify-audit").json()["keyed"] is True


def test_a_user_the_operator_did_not_name_cannot_drain(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    seed_events(portal, 10)
    before = portal.stats()["by_method"]
    agent = Agent(accounts, broker)
    get = agent("event.offline.get", "--params", '{"clear": 0}', "--confirm-write")
    clear = agent("event.offline.clear", "--params", '{"process_id": "x"}', "--confirm-destructive")
    batched = agent(
        "batch", "--params", '{"cmd": {"a": "event.offline.get?clear=1"}}', "--confirm-write"
    )
    planned = agent("event.offline.get", "--params", '{"clear": 1}', "--plan-only")
    for refused in (get, clear, batched, planned):
        assert refused.code == 3, refused.err
        assert refused.error()["code"] == "DRAIN_NOT_ALLOWED"
        assert "B24_BROKER_DRAINERS" in refused.error()["message"]
    # The worker run as the agent stops at its first reservation: exit 3, one line naming why.
    worker = _worker(accounts, broker, portal, "--drain", who="agent")
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 3, err
    assert error_of(err)["code"] == "DRAIN_NOT_ALLOWED"
    assert len(err.strip().splitlines()[-1]) < 400 and "B24_BROKER_DRAINERS" in err
    after = portal.stats()["by_method"]
    for method in ("event.offline.get", "event.offline.clear", "event.offline.error", "batch"):
        assert after.get(method, 0) == before.get(method, 0), method
    assert len(queue_rows(portal)) == 10
    refusals = [line for line in broker.audit_lines() if line.get("error") == "DRAIN_NOT_ALLOWED"]
    assert len(refusals) == 5
    assert {line["origin"]["uid"] for line in refusals} == {_uid(accounts.agent)}


def _as_worker(accounts: Accounts, broker: Broker, *command: str) -> subprocess.CompletedProcess:
    """``command`` (a script and its args) run by the worker's user with only the broker's
    socket in its environment (no B24_DOMAIN)."""
    assert PYTHON is not None
    python, python_env = PYTHON
    return subprocess.run(
        [python, *command],
        env={
            "PATH": PATH,
            "HOME": str(accounts.worker_home),
            "B24_BROKER": f"unix:{broker.socket}",
            **python_env,
        },
        cwd=accounts.worker_home,
        capture_output=True,
        text=True,
        timeout=60,
        **accounts.as_worker(),
    )


def test_a_drain_plan_the_worker_made_runs_for_no_other_user(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    """The drainer's ``--plan-only`` passes the drain check; running that plan must pass it
    too, or any caller who learns its id drains the queue (review6 L4)."""
    seed_events(portal, 3)
    clear = ("event.offline.clear", "--params", '{"process_id": "x"}', "--plan-only")
    made = _as_worker(accounts, broker, str(SCRIPT), *clear)
    assert made.returncode == 0, made.stderr
    plan_id = json.loads(made.stdout)["plan"]["id"]
    before = portal.stats()["by_method"].get("event.offline.clear", 0)
    run = Agent(accounts, broker)("--execute-plan", plan_id, "--confirm-destructive")
    assert run.code == 3 and run.error()["code"] == "DRAIN_NOT_ALLOWED", run.err
    assert portal.stats()["by_method"].get("event.offline.clear", 0) == before


def test_the_worker_without_b24_domain_is_refused_before_anything_is_sent(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    done = _as_worker(accounts, broker, str(WORKER_SCRIPT), "--drain")
    assert done.returncode == 4 and error_of(done.stderr)["code"] == "CONFIG_MISSING"
    assert "B24_DOMAIN" in json.loads(done.stderr.strip().splitlines()[-1])["error"]["message"]
    assert os.path.exists(broker.socket)


def test_two_agents_holding_their_calls_open_leave_the_drain_its_slots(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    """The agent and a second agent user each open 64 calls that read a stdin never closed.
    Together they are served at most MAX_CALLS - RESERVED_CALLS; the named worker still drains
    at once. Before, the first took 48 slots and the second the last 16 of 64, and the
    worker's calls waited in the socket's backlog until one of them let go."""
    holders = []
    try:
        for who in (
            Agent(accounts, broker),
            Agent(accounts, broker, accounts.as_intruder(), accounts.base),
        ):
            holders.append(hold_calls(who, broker))
        assert sum(held for _, held in holders) <= MAX_CALLS - RESERVED_CALLS, holders
        seed_events(portal, 20)
        sink = accounts.worker_home / "held-inbox.jsonl"
        worker = _worker(accounts, broker, portal, "--drain", "--sink", str(sink))
        try:
            out, err = worker.communicate(timeout=60)
        finally:
            worker.kill()
        assert worker.returncode == 0, err
        assert summary_of(out)["handled"] >= 20 and queue_rows(portal) == []
    finally:
        for holder, _ in holders:
            holder.kill()
            holder.wait(timeout=30)
