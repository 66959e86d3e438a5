"""What an agent's signals can do to the broker's worker serving its call (review6 R1).

The agent's ``b24`` relays SIGINT, SIGTERM and SIGHUP to the worker (any process of the agent
can send those bytes on its connection). Each must stop the call the way Ctrl-C does, as an
interruption the call handles, never by ending the operator's process on the spot: a worker that
dies after a write left writes no audit line, and the operator's keyed audit would miss a write
the portal ran.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_support import Accounts, Agent, Broker, can_make_users
from cli_support import FULL_EXPORT, SCRIPT, check, interrupt_when_stdout_full
from conftest import Sandbox, lock_held_elsewhere, signal_once_answered

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
    assert lines[0]["outcome"] == "error" and lines[0]["exit_code"] in (7, 130, 128 + signum)
    # ... and the caller hears how it ended (as after Ctrl-C: 130, or 128 + SIGTERM/SIGHUP).
    expected = 130 if signum == signal.SIGINT else 128 + signum
    assert call.returncode == expected and "Traceback" not in err, (call.returncode, err)


def test_a_relayed_sigterm_ends_an_export_whose_stdout_is_full(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    """``systemctl stop``'s SIGTERM (here relayed by the agent's b24) while the brokered
    export's stdout is full and unread. Before, the worker's printer thread sat in the full
    pipe holding its lock and the interrupted call waited for it until someone read; now the
    worker ends the call 130 with the one error line (review7b M-b)."""
    portal.admin("seed", {"crm.lead": 1500})
    run = interrupt_when_stdout_full(Agent(accounts, broker).popen(*FULL_EXPORT), signal.SIGTERM)
    check(run)
    assert run.error()["code"] == "INTERRUPTED" and len(run.err.splitlines()) == 1, run.err


#: A caller writing its own frame: crm.lead.add with ``ignored`` of its choosing, then prints how
#: the worker's answer ended (its exit code, or ``LOST`` when the worker died).
_OWN_FRAME = """
import json, socket, sys
sys.path.insert(0, {scripts!r})
from b24agent.cli.warm import wire
argv = ["b24", "crm.lead.add", "--params", {params!r}, "--confirm-write"]
conn = socket.socket(socket.AF_UNIX)
conn.connect({socket!r})
fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
conn.sendmsg([wire.encode_request(argv, {{}}, "/", 0o077, {ignored!r})],
             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
assert conn.recv(1) == wire.READY
conn.sendall(wire.GO)
answer = conn.makefile("rb").readline()  # empty when the worker died
print(answer[1:-1].decode() if answer.startswith(wire.EXITED) else "LOST", flush=True)
"""


@pytest.mark.parametrize("ignored", [[signal.SIGTERM], [signal.SIGKILL]])
def test_the_operators_sigterm_interrupts_a_call_whatever_the_caller_says_it_ignores(
    accounts: Accounts, broker: Broker, portal: Sandbox, ignored: list[int]
) -> None:
    """review7 L1: the request's ``ignored`` field is the caller's word, and the broker's worker
    is the operator's process. Before, ``[SIGTERM]`` made the worker ignore the SIGTERM that
    ``systemctl stop`` sends every process of the unit (the call ran on, exit 0), and
    ``[SIGKILL]`` killed the worker as it took the call (no audit line, the caller lost). Now
    both are interrupted by the operator's SIGTERM like any call: exit 143, audited."""
    agent = Agent(accounts, broker)
    title = f"ignores {ignored[0]}"
    assert agent("user.current").code == 0
    before = len(broker.audit_lines())
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "error": None, "delay_ms": 2000}]})
    params = json.dumps({"fields": {"TITLE": title}})
    code = _OWN_FRAME.format(
        scripts=str(SCRIPT.parent),
        params=params,
        socket=str(broker.socket),
        ignored=[int(signum) for signum in ignored],
    )
    caller = agent.popen_python(code)

    def stop_the_workers() -> None:  # what systemd's stop does to every process of the unit
        for pid in broker.worker_pids():
            os.kill(pid, signal.SIGTERM)

    stopper = portal.once_sent("crm.lead.add", stop_the_workers)
    out, err = caller.communicate(timeout=120)
    stopper.join()
    time.sleep(2.5)  # the portal's held answer: the write runs whether anyone waits or not
    portal.admin("faults", {"rules": []})
    assert out.strip() == "143", (out, err)
    lines = broker.audit_lines()[before:]
    assert [(line["method"], line["outcome"]) for line in lines] == [("crm.lead.add", "error")]
    assert lines[0]["exit_code"] in (7, 143), lines


def test_a_relayed_signal_while_the_audit_log_is_locked_ends_the_call_at_once(
    accounts: Accounts, broker: Broker, portal: Sandbox
) -> None:
    """Another process holds the broker's audit log (a stuck writer). The worker used to hold
    the caller's SIGTERM until the lock's 60 s timeout; now the call ends at once, exit 143,
    and its line joins the keyed chain at the next write."""
    agent = Agent(accounts, broker)
    assert agent("user.current").code == 0
    before = len(broker.audit_lines())
    with lock_held_elsewhere(Path(f"{broker.audit_file}.lock")):
        start = functools.partial(agent.popen, "user.current")
        call, _out, err, waited = signal_once_answered(
            portal, "user.current", start, signal.SIGTERM
        )
        assert len(broker.audit_lines()) == before
    assert waited < 3, waited
    assert call.returncode == 143 and "Traceback" not in err, (call.returncode, err)
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "INTERRUPTED" and "ended 'ok' (exit 0)" in error["message"]
    assert agent("user.current").code == 0
    lines = broker.audit_lines()[before:]
    assert [(line["method"], line["outcome"], line["exit_code"]) for line in lines] == [
        ("user.current", "ok", 0)
    ] * 2
    assert len({line["origin"]["pid"] for line in lines}) == 2  # the kept call's and the next
    assert broker.operator_cli("--verify-audit").json()["keyed"] is True
