"""What an agent's signals can do to the broker's worker serving its call (review6 R1).

The agent's ``b24`` relays SIGINT, SIGTERM and SIGHUP to the worker (any process of the agent
can send those bytes on its connection). Each must stop the call the way Ctrl-C does, as an
interruption the call handles, never by ending the operator's process on the spot: a worker that
dies after a write left writes no audit line, and the operator's keyed audit would miss a write
the portal ran.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from broker_support import Accounts, Agent, Broker, can_make_users
from conftest import Sandbox

pytestmark = pytest.mark.skipif(not can_make_users(), reason="needs root and useradd")


@pytest.fixture(scope="module")
def broker(accounts: Accounts, sandbox_proc: Sandbox) -> Iterator[Broker]:
    started = Broker(accounts, sandbox_proc, "signals", B24_APPROVAL="off")
    yield started
    started.stop()


def _signals(proc: Any, signum: int, times: int) -> None:
    for _ in range(times):
        proc.send_signal(signum)
        time.sleep(0.002)


@pytest.mark.parametrize(
    ("signum", "times"), [(signal.SIGTERM, 1), (signal.SIGHUP, 1), (signal.SIGINT, 40)]
)
def test_a_relayed_signal_after_the_write_left_still_leaves_its_audit_line(
    accounts: Accounts, broker: Broker, portal: Sandbox, signum: int, times: int
) -> None:
    agent = Agent(accounts, broker)
    title = f"signal {signum}"
    assert agent("user.current").code == 0  # the broker's state and audit log exist
    before = len(broker.audit_lines())
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "error": None, "delay_ms": 1500}]})
    call = agent.popen(
        "crm.lead.add", "--params", json.dumps({"fields": {"TITLE": title}}), "--confirm-write"
    )
    signaller = portal.once_sent("crm.lead.add", lambda: _signals(call, signum, times))
    _out, err = call.communicate(timeout=120)
    signaller.join()
    time.sleep(2.0)  # the portal's held answer: the write runs whether anyone waits or not
    portal.admin("faults", {"rules": []})
    ran = portal.rest("crm.lead.list", {"filter": {"TITLE": title}}).json()["result"]
    assert len(ran) == 1  # the portal ran the write
    # The operator's audit holds the write: the worker was interrupted, not killed ...
    lines = broker.audit_lines()[before:]
    assert [line["method"] for line in lines] == ["crm.lead.add"], lines
    assert lines[0]["outcome"] == "error" and lines[0]["exit_code"] in (7, 130)
    # ... and the caller hears how it ended (exit 130, as after Ctrl-C).
    assert call.returncode == 130 and "Traceback" not in err, (call.returncode, err)
