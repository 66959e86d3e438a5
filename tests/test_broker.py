"""Broker mode (README "The broker"), with the agent as a second OS user.

The operator's account runs ``b24-broker serve`` with the credentials, the policy (packs core,
``B24_APPROVAL=writes``) and the state; the agent's account runs ``b24`` with ``B24_BROKER`` and
an environment that tries to widen everything. What the agent can read, send and change is
measured here, and these are the figures behind README's "What the guards stop" broker column.
"""

from __future__ import annotations

import hmac
import json
import pwd
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from b24agent.broker.service import MAX_CALLS_PER_USER
from b24agent.fingerprint import canonical_json
from broker_support import PYTHON, Accounts, Agent, Broker, can_make_users, hold_calls
from cli_support import SCRIPT
from conftest import Sandbox

pytestmark = pytest.mark.skipif(not can_make_users(), reason="needs root and useradd")


@pytest.fixture(scope="module")
def broker(accounts: Accounts, sandbox_proc: Sandbox) -> Iterator[Broker]:
    started = Broker(accounts, sandbox_proc, "main")
    yield started
    started.stop()


@pytest.fixture
def agent(accounts: Accounts, broker: Broker, portal: Sandbox) -> Agent:
    return Agent(accounts, broker)


def _leads(portal: Sandbox, title: str) -> int:
    found = portal.rest("crm.lead.list", {"filter": {"TITLE": title}}).json()["result"]
    return len(found)


def _plan(agent: Agent, title: str) -> str:
    run = agent("crm.lead.add", "--params", json.dumps({"fields": {"TITLE": title}}), "--plan-only")
    assert run.code == 0, run.err
    document = run.json()
    assert document["approval"].startswith("pending")
    return document["plan"]["id"]


def test_the_agent_gets_the_brokers_policy_whatever_its_environment(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    me = agent("user.current", "--output", "result")
    assert me.code == 0 and me.json()["ID"] == "1"  # with B24_PACKS=all (no such pack) read here,
    # this would have been a configuration error
    # B24_PACKS=all and B24_ALLOW_FLAGS in the agent's environment, wider flags on its command
    # line: the broker's ceiling (packs core, no widening flag allowed) still decides.
    notify = ("im.notify.system.add", "--params", '{"USER_ID": 1, "MESSAGE": "x"}')
    for widening in ([], ["--packs", "core,comms"], ["--allow-unlisted"], ["--no-audit"]):
        outside = agent(*notify, *widening)
        assert outside.code == 3, outside.err
    assert outside.error()["code"] != "APPROVAL_REQUIRED"  # refused by the ceiling itself
    # --confirm-write is the agent's to type; the broker's B24_APPROVAL=writes wants a human.
    direct = agent("crm.lead.add", "--params", '{"fields": {"TITLE": "direct"}}', "--confirm-write")
    assert direct.code == 3 and direct.error()["code"] == "APPROVAL_REQUIRED"
    # Files and folders named by the caller are never opened by the broker.
    for flag in (
        ["--env-file", str(broker.state / "audit.key")],
        ["--audit-file", "/tmp/x"],
        ["--install-skill", str(broker.state)],
    ):
        refused = agent("user.current", *flag)
        assert refused.code == 3 and refused.error()["code"] == "BROKER_PATH_REFUSED"
        last = broker.audit_lines()[-1]  # what the caller tried is on the operator's record
        assert (last["outcome"], last["error"], last["method"]) == (
            "refused",
            "BROKER_PATH_REFUSED",
            "user.current",
        )
        assert last["origin"]["uid"] == pwd.getpwnam(agent.accounts.agent).pw_uid
    assert portal.sent("crm.lead.add") == 0 and portal.sent("im.notify.system.add") == 0
    # ... but the agent's own files reach the broker as stdin, read with the agent's rights.
    params = agent.accounts.agent_home / "params.json"
    agent.python(f"open({str(params)!r}, 'w').write('{{\"id\": 1}}')")
    by_file = agent("user.get", "--params", f"@{params}", "--output", "result")
    assert by_file.code == 0 and by_file.json()[0]["ID"] == "1", by_file.err
    # Every audit line names the agent's uid, as the kernel reported it.
    agent_uid = int(agent.python("import os; print(os.getuid())").out)
    callers = {line["origin"]["uid"] for line in broker.audit_lines()[-6:]}
    assert callers == {agent_uid}


def test_a_program_calls_the_broker_and_gets_the_output_back(agent: Agent, broker: Broker) -> None:
    """``brokered.call``: the MCP server's or the worker's way in, from any thread."""
    result = agent.python(
        "import json, sys, threading\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from b24agent.cli.warm.brokered import call\n"
        "box = []\n"
        "def run():\n"
        f"    box.append(call('unix:{broker.socket}', ['b24', 'user.get', '--params', '-',"
        " '--output', 'result'], stdin=b'{\"ID\": 1}'))\n"
        "thread = threading.Thread(target=run); thread.start(); thread.join()\n"
        "print(json.dumps([box[0].exit_code, json.loads(box[0].stdout)[0]['ID']]))\n"
        f"gone = call('unix:{broker.run_dir}/none.sock', ['b24', 'user.current'])\n"
        "print(json.dumps([gone.exit_code, json.loads(gone.stderr)['error']['code']]))\n"
    )
    assert result.code == 0, result.err
    first, second = (json.loads(line) for line in result.out.splitlines())
    assert first == [0, "1"] and second == [6, "BROKER_UNREACHABLE"]


def test_the_agent_holds_no_secret_and_cannot_read_the_brokers_state(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    code = portal.webhook["code"]
    waiting = agent.popen("--execute-plan", _plan(agent, "no secret"))
    time.sleep(1.0)  # the call is now waiting in the broker for a decision
    try:
        for part in ("environ", "cmdline"):
            assert code.encode() not in Path(f"/proc/{waiting.pid}/{part}").read_bytes()
    finally:
        waiting.send_signal(signal.SIGINT)  # relayed to the broker's worker: it stops waiting
    interrupted = agent.finish(waiting)
    assert interrupted.code == 130 and portal.sent("crm.lead.add") == 0
    # Everything the agent's account can read under the test's folders, the broker's included.
    readable = agent.python(
        "import os, sys\n"
        f"code = {code!r}.encode()\n"
        "seen = holding = 0\n"
        f"for root, dirs, files in os.walk({str(agent.accounts.base)!r}):\n"
        "    for name in files:\n"
        "        try:\n"
        "            data = open(os.path.join(root, name), 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        seen += 1\n"
        "        holding += code in data\n"
        "print(seen, holding)\n"
    )
    seen, holding = map(int, readable.out.split())
    assert seen >= 1 and holding == 0
    for target in (
        broker.state,
        broker.portal_state,
        broker.audit_file,
        broker.state / "audit.key",
    ):
        tried = agent.python(
            f"import os\ntry:\n    os.listdir({str(target)!r}) if os.path.isdir({str(target)!r}) "
            f"else open({str(target)!r}).read()\nexcept PermissionError:\n    print('denied')\n"
        )
        assert tried.out.strip() == "denied", (target, tried.out, tried.err)


def test_a_write_waits_for_a_human_and_runs_exactly_once(
    accounts: Accounts, agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    planned = agent(
        "crm.lead.add", "--params", '{"fields": {"TITLE": "approved once"}}', "--plan-only"
    )
    plan_id = planned.json()["plan"]["id"]
    printed = shlex.split(planned.json()["execute"])  # python3 SCRIPT --execute-plan ID ...
    assert printed[1] == str(SCRIPT) and "--env-file" in printed  # the broker's own env file
    waiting = agent.popen(*printed[2:], "--output", "result")  # run as printed
    time.sleep(1.5)
    assert waiting.poll() is None and portal.sent("crm.lead.add") == 0  # still waiting
    # The agent holds no channel to approve: the admin socket is the operator group's.
    self_approval = broker.admin("approve", plan_id, "--yes", who="agent")
    assert self_approval.code == 4 and "BROKER_UNREACHABLE" in self_approval.err
    approved = broker.admin("approve", plan_id, "--yes")
    assert approved.code == 0, approved.err
    assert '"plan": {' in approved.out and '"verdict": "approved"' in approved.out  # shown first
    ran = agent.finish(waiting)
    assert ran.code == 0, ran.err
    assert _leads(portal, "approved once") == 1 and portal.sent("crm.lead.add") == 1
    # The decision is a line of the broker's keyed chain: who (the approver's uid), plan, digest.
    decided, executed = [line for line in broker.audit_lines() if line["plan_id"] == plan_id][-2:]
    assert decided["outcome"] == "approved" and executed["outcome"] == "ok"
    assert decided["origin"]["uid"] == pwd.getpwnam(accounts.operator).pw_uid
    assert decided["origin"]["via"] == "broker-admin" and len(decided["plan_digest"]) == 64
    assert decided["ts"] <= executed["ts"]
    again = agent("--execute-plan", plan_id)
    assert again.code == 5 and again.error()["code"] == "PLAN_SPENT"
    assert portal.sent("crm.lead.add") == 1


def test_declined_or_never_approved_sends_nothing(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    declined = _plan(agent, "declined")
    assert broker.admin("deny", declined).code == 0
    refused = agent("--execute-plan", declined)
    assert refused.code == 3 and refused.error()["code"] == "APPROVAL_DENIED"
    pending = agent("--execute-plan", _plan(agent, "never approved"))  # B24_APPROVAL_WAIT_SEC=8
    assert pending.code == 3 and pending.error()["code"] == "APPROVAL_PENDING"
    assert pending.error()["retryable"] is True
    assert broker.admin("approve", declined, "--yes").code == 5  # a decision is final
    assert portal.sent("crm.lead.add") == 0
    decisions = [line for line in broker.audit_lines() if line["plan_id"] == declined]
    assert [line["outcome"] for line in decisions] == ["planned", "denied", "refused"]


def _sign(body: Any, key_file: Path) -> str:
    key = bytes.fromhex(json.loads(key_file.read_text())["key"])
    return hmac.new(key, canonical_json(body).encode(), "sha256").hexdigest()


def _resign(plan_file: Path, key_file: Path, change: dict[str, Any]) -> None:
    """Edit a stored plan as someone holding the plan key would (root, in this test)."""
    stored = json.loads(plan_file.read_text())
    stored["plan"]["params"] = change
    stored["signature"] = _sign(stored["plan"], key_file)
    plan_file.write_text(json.dumps(stored))


def test_an_approved_plan_edited_afterwards_is_refused(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    plans = broker.portal_state / "plans"
    edited, resigned = _plan(agent, "edited"), _plan(agent, "resigned")
    for plan_id in (edited, resigned):
        assert broker.admin("approve", plan_id, "--yes").code == 0
    text = (plans / f"{edited}.json").read_text()
    (plans / f"{edited}.json").write_text(text.replace('"edited"', '"EDITED"'))
    tampered = agent("--execute-plan", edited)
    assert tampered.code == 5 and tampered.error()["code"] == "PLAN_TAMPERED"
    _resign(plans / f"{resigned}.json", broker.state / "plan.key", {"fields": {"TITLE": "Z"}})
    stale = agent("--execute-plan", resigned)
    assert stale.code == 5 and stale.error()["code"] == "APPROVAL_STALE"
    assert portal.sent("crm.lead.add") == 0


def test_whoever_writes_the_store_cannot_approve_a_plan(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    """The plan key is the broker's local file, never a document of the state store (which may
    be a Redis that callers reach): a key planted in the store signs nothing the broker trusts."""
    plan_id = _plan(agent, "self-approved")
    plans = broker.portal_state / "plans"
    assert not (plans / ".plan-signing-key.json").exists()
    planted = plans / ".plan-signing-key.json"
    planted.write_text(json.dumps({"key": "ab" * 32}))
    stored = json.loads((plans / f"{plan_id}.json").read_text())
    digest = canonical_json(stored["plan"])  # any digest: the signature is what is checked
    body = {"plan": plan_id, "digest": digest, "verdict": "approved", "by": {"uid": 0}, "at": 1.0}
    forged = {"decision": body, "signature": _sign(body, planted)}
    (plans / f"{plan_id}.decision").write_text(json.dumps(forged))
    refused = agent("--execute-plan", plan_id)
    assert refused.code == 5 and refused.error()["code"] == "APPROVAL_TAMPERED", refused.err
    assert portal.sent("crm.lead.add") == 0 and _leads(portal, "self-approved") == 0
    # The forged decision does not hide the other plans from the people who decide them.
    other = _plan(agent, "still-pending")
    listed = broker.admin("list")
    assert listed.code == 0, listed.err
    states = {plan["id"]: plan for plan in listed.json()["plans"]}
    assert states[plan_id]["decision"] == "unreadable"
    assert states[plan_id]["error"] == "APPROVAL_TAMPERED"
    assert states[other]["decision"] == "pending"


def test_the_broker_refuses_a_redis_store_without_a_password(
    accounts: Accounts, sandbox_proc: Sandbox
) -> None:
    """Every local user reaches a loopback Redis that needs no password, and would read the
    broker's tokens there: the broker does not start on one (exit 4, one line, no secret)."""
    with pytest.raises(AssertionError) as failed:
        Broker(accounts, sandbox_proc, "openredis", B24_STATE_BACKEND="redis://127.0.0.1:1/0")
    log = str(failed.value)
    assert "STATE_STORE_OPEN" in log and "Traceback" not in log
    assert sandbox_proc.webhook_url not in log


def test_a_cut_tail_or_a_deleted_head_fails_verify_audit(
    agent: Agent, broker: Broker, tmp_path: Path
) -> None:
    for _ in range(3):
        assert agent("user.current").code == 0
    through_broker = agent("--verify-audit")
    assert through_broker.code == 0 and through_broker.json()["keyed"] is True
    sound = broker.operator_cli("--verify-audit")
    assert sound.code == 0 and sound.json()["keyed"] is True and sound.json()["anchored"]
    log, head = broker.audit_file, broker.audit_file.with_name("audit.jsonl.head")
    saved_log, saved_head = log.read_bytes(), head.read_bytes()
    try:
        lines = saved_log.splitlines(keepends=True)
        log.write_bytes(b"".join(lines[:-1]))  # cut the tail
        assert broker.operator_cli("--verify-audit").code == 1
        new_end = json.loads(lines[-2])["hash"]  # ... and rewrite the head without the key
        head.write_text(json.dumps({"hash": new_end, "mac": "0" * 64}))
        forged = broker.operator_cli("--verify-audit")
        assert forged.code == 1 and "MAC" in forged.error()["message"]
        log.write_bytes(saved_log)
        head.unlink()  # delete the head
        deleted = broker.operator_cli("--verify-audit")
        assert deleted.code == 1 and "head" in deleted.error()["message"]
        without_key = broker.operator_cli("--verify-audit", B24_AUDIT_KEY_FILE="")
        assert without_key.code == 1 and "keyed" in without_key.error()["message"]
    finally:
        log.write_bytes(saved_log)
        head.write_bytes(saved_head)  # made anew by root: give it back to the broker's account
        shutil.chown(head, broker.accounts.operator, broker.accounts.ops)
        head.chmod(0o600)
    assert broker.operator_cli("--verify-audit").code == 0
    assert agent("user.current").code == 0  # the broker still writes its chain


def test_twenty_agents_through_one_broker_on_a_standard_plan(
    accounts: Accounts, start_sandbox: Any
) -> None:
    """20 agent processes at once, 4 calls each: 80 requests against a bucket of 50 that drains
    2 a second. The broker's one limiter paces them all; the portal rejects none."""
    standard = start_sandbox("--plan", "standard")
    broker = Broker(accounts, standard, "standard")
    try:
        agent = Agent(accounts, broker)
        loop = (
            "import subprocess, sys\n"
            "for _ in range(4):\n"
            f"    code = subprocess.call([sys.executable, {str(SCRIPT)!r}, 'crm.lead.list'],"
            " stdout=subprocess.DEVNULL)\n"
            "    if code:\n"
            "        sys.exit(code)\n"
        )
        agents = [agent.popen_python(loop) for _ in range(20)]
        codes = [proc.wait(timeout=240) for proc in agents]
        stats = standard.stats()
        assert codes == [0] * 20, [proc.stderr.read() for proc in agents if proc.returncode]
        assert stats["by_method"]["crm.lead.list"] == 80
        assert stats["rate_limit_rejections"] == 0 and stats["operating_limit_rejections"] == 0
    finally:
        broker.stop()


#: A stand-in "broker" served by some user: it counts the bytes a caller sends it.
_LISTENER = (
    "import os, socket, sys\n"
    "path, report = sys.argv[1], sys.argv[2]\n"
    "server = socket.socket(socket.AF_UNIX)\n"
    "server.bind(path); os.chmod(path, 0o666); server.listen(1)\n"
    "conn, _ = server.accept(); conn.settimeout(5)\n"
    "got = b''\n"
    "try:\n"
    "    while chunk := conn.recv(65536):\n"
    "        got += chunk\n"
    "except OSError:\n"
    "    pass\n"
    "open(report, 'w').write(str(len(got)))\n"
)


def _impostor(accounts: Accounts, who: dict[str, Any], name: str) -> tuple[Any, Path, Path]:
    """A listening socket served by the account ``who``; returns its process, socket, report."""
    folder = accounts.owned_folder(accounts.base / f"impostor-{name}", who["user"], 0o755)
    sock, report = folder / "b24.sock", folder / "received"
    python, python_env = PYTHON or ("", {})
    proc = subprocess.Popen(
        [python, "-c", _LISTENER, str(sock), str(report)], env=python_env, **who
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc, sock, report


def test_the_caller_refuses_a_broker_of_its_own_user_or_not_the_named_one(
    accounts: Accounts, agent: Agent, broker: Broker
) -> None:
    operator_uid = pwd.getpwnam(accounts.operator).pw_uid
    lines = len(broker.audit_lines())
    for named in (accounts.operator, str(operator_uid)):  # the operator's word, name or uid
        agent.env["B24_BROKER_USER"] = named
        assert agent("user.current").code == 0
    agent.env["B24_BROKER_USER"] = accounts.worker  # the real broker, but not the named user
    wrong = agent("user.current")
    assert wrong.code == 4 and wrong.error()["code"] == "BROKER_UNTRUSTED"
    assert "B24_BROKER_USER" in wrong.error()["message"]
    agent.env["B24_BROKER_USER"] = "no-such-user-b24"
    assert agent("user.current").code == 4
    assert len(broker.audit_lines()) == lines + 2  # the refused calls reached no broker
    # Sockets served by the agent itself, and by another user when the operator named its own.
    for who, expected, why in (
        (accounts.as_agent(), None, "this very user"),
        (accounts.as_worker(), accounts.operator, f"B24_BROKER_USER={accounts.operator}"),
    ):
        proc, sock, report = _impostor(accounts, who, who["user"])
        agent.env["B24_BROKER"] = f"unix:{sock}"
        agent.env.pop("B24_BROKER_USER", None)
        if expected:
            agent.env["B24_BROKER_USER"] = expected
        refused = agent("crm.lead.add", "--params", '{"fields": {"TITLE": "x"}}')
        proc.wait(timeout=30)
        assert refused.code == 4 and refused.error()["code"] == "BROKER_UNTRUSTED", refused.err
        assert why in refused.error()["message"]
        assert report.read_text() == "0"  # not one byte of the call reached it


def test_the_approver_refuses_an_admin_socket_not_served_by_the_broker(
    accounts: Accounts, broker: Broker
) -> None:
    """``b24-broker`` checks who serves the admin socket before it sends anything: the broker's
    user (B24_BROKER_USER) or, unset, the person's own. Before, a socket the agent planted where
    the approver looks got the request and could answer with plans of its making."""
    for who, expected in ((accounts.as_agent(), None), (accounts.as_worker(), accounts.operator)):
        proc, sock, report = _impostor(accounts, who, f"admin-{who['user']}")
        named = {"B24_BROKER_USER": expected} if expected else {}
        refused = broker.admin("approve", "p-any", "--yes", socket=sock, **named)
        proc.wait(timeout=30)
        assert refused.code == 4, refused.err
        error = json.loads(refused.err)["error"]
        assert (
            error["code"] == "BROKER_UNTRUSTED"
            and str(pwd.getpwnam(who["user"]).pw_uid) in (error["message"])
        )
        assert report.read_text() == "0"  # not one byte reached it
        assert refused.out == ""
    # The real broker answers (no such plan) for its user by name, and for the operator itself.
    for named in ({"B24_BROKER_USER": accounts.operator}, {}):
        answered = broker.admin("show", "p-" + "A" * 32, **named)
        assert json.loads(answered.err)["error"]["code"] == "PLAN_NOT_FOUND", answered.err
    elsewhere = broker.admin("show", "p-" + "A" * 32, B24_BROKER_USER=accounts.worker)
    assert elsewhere.code == 4 and "BROKER_UNTRUSTED" in elsewhere.err, elsewhere.err
    # A server the person named that closes without an answer: one clear line, exit 6.
    proc, sock, report = _impostor(accounts, accounts.as_agent(), "admin-silent")
    silent = broker.admin("list", socket=sock, B24_BROKER_USER=accounts.agent)
    proc.wait(timeout=30)
    assert silent.code == 6 and json.loads(silent.err)["error"]["code"] == "BROKER_NO_ANSWER"


def test_one_approval_runs_a_bulk_plan_once_and_an_edited_one_is_refused(
    agent: Agent, portal: Sandbox, broker: Broker
) -> None:
    home = agent.accounts.agent_home

    def bulk(tag: str) -> str:
        lines = "".join(
            json.dumps({"method": "crm.lead.add", "params": {"fields": {"TITLE": f"{tag} {n}"}}})
            + "\n"
            for n in range(3)
        )
        path = home / f"{tag}.jsonl"
        agent.python(f"open({str(path)!r}, 'w').write({lines!r})")
        planned = agent("--batch-file", str(path), "--plan-only")
        assert planned.code == 0, planned.err
        assert planned.json()["approval"].startswith("pending")
        return planned.json()["plan"]["id"]

    plan_id = bulk("bulk")
    waiting = agent.popen("--execute-plan", plan_id)
    time.sleep(1.0)
    assert waiting.poll() is None and portal.sent("crm.lead.add") == 0
    assert broker.admin("approve", plan_id, "--yes").code == 0  # one approval for 3 calls
    ran = agent.finish(waiting)
    assert ran.code == 0, ran.err
    assert [_leads(portal, f"bulk {n}") for n in range(3)] == [1, 1, 1]
    again = agent("--execute-plan", plan_id)
    assert again.code == 5 and again.error()["code"] == "PLAN_SPENT"
    assert [_leads(portal, f"bulk {n}") for n in range(3)] == [1, 1, 1]
    # Approved, then edited by someone holding the plan key: refused, nothing of it sent.
    edited = bulk("edited")
    assert broker.admin("approve", edited, "--yes").code == 0
    plans = broker.portal_state / "plans"
    stored = json.loads((plans / f"{edited}.json").read_text())["plan"]["params"]
    stored["calls"][1]["params"]["fields"]["TITLE"] = "swapped in"
    _resign(plans / f"{edited}.json", broker.state / "plan.key", stored)
    stale = agent("--execute-plan", edited)
    assert stale.code == 5 and stale.error()["code"] == "APPROVAL_STALE"
    assert _leads(portal, "swapped in") == 0
    assert [_leads(portal, f"edited {n}") for n in range(3)] == [0, 0, 0]


def test_a_caller_cannot_hold_the_brokers_processes(agent: Agent, broker: Broker) -> None:
    """70 connections trickling one byte every 2 s: the broker serves at most
    MAX_CALLS_PER_USER (48) of one user at once, closes the rest unserved and ends each served
    one 10 s after accepting it (per-read timeouts never fired before, and every connection had
    its own process); afterwards a real call is served."""
    trickler = agent.popen_python(
        "import socket, time\n"
        "conns = []\n"
        "for _ in range(70):\n"
        "    c = socket.socket(socket.AF_UNIX)\n"
        f"    c.connect({str(broker.socket)!r}); conns.append(c)\n"
        "print('connected', flush=True)\n"
        "started = time.monotonic(); closed = {}\n"
        "while len(closed) < 64 and time.monotonic() - started < 40:\n"
        "    for n, c in enumerate(conns):\n"
        "        if n in closed: continue\n"
        "        try: c.send(b'\\0')\n"
        "        except OSError: closed[n] = time.monotonic() - started\n"
        "    time.sleep(2)\n"
        "print(len(closed), round(max(closed.values(), default=99), 1))\n"
    )
    assert trickler.stdout is not None and trickler.stdout.readline() == "connected\n"
    peak, started = 0, time.monotonic()
    while time.monotonic() - started < 8:  # each lives 10 s once accepted
        peak = max(peak, len(broker.worker_pids()))
        time.sleep(0.1)
    out, err = trickler.communicate(timeout=60)
    closed, slowest = out.split()
    assert peak == MAX_CALLS_PER_USER, peak
    assert int(closed) >= 64 and float(slowest) < 30, (out, err)
    assert agent("user.current").code == 0


def test_one_user_holding_its_calls_open_leaves_the_others_served(
    accounts: Accounts, agent: Agent, broker: Broker
) -> None:
    """The agent starts 64 calls that read a stdin it never closes, so each runs until it
    does. Only MAX_CALLS_PER_USER of them are served (the rest are closed unserved: nothing
    sent, exit 6 for a real ``b24``); the worker's account, another user, is still served at
    once. Before, the agent held every one of MAX_CALLS (64) and any other call waited."""
    holder, held = hold_calls(agent, broker)
    try:
        # At most its share (a call of an earlier test may still hold one of it).
        assert 0 < held <= MAX_CALLS_PER_USER, held
        assert PYTHON is not None
        agent_python = PYTHON[0]
        worker = subprocess.run(
            [agent_python, str(SCRIPT), "user.current"],
            env={**agent.env, "HOME": str(accounts.worker_home)},
            cwd=accounts.worker_home,
            capture_output=True,
            text=True,
            timeout=30,
            **accounts.as_worker(),
        )
        assert worker.returncode == 0, worker.stderr
        refused = agent("user.current")  # the agent's own share is taken
        assert refused.code == 6 and refused.error()["code"] == "BROKER_UNREACHABLE"
    finally:
        holder.kill()
        holder.wait(timeout=30)
