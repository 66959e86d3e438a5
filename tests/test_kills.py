"""SIGKILL at random moments, then the state is checked: nothing lost, doubled or misreported.

- A 500-line batch file of CRM creates, killed five times at random and rerun: 500 records, none
  twice (each line is settled by its own ORIGIN_ID).
- 50 calls killed at random moments (some mid audit write): ``--verify-audit`` still exits 0.
- A create killed while the portal still runs it is not settled (nor sent again) before the
  read timeout has passed.

Calls run in their own process (``B24_SERVER=off``) so the kill lands on the process doing the
work. All are marked slow; their figures are printed (``-s``).
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from cli_support import Cli, lead_creates
from conftest import Sandbox

LINES = 500


def _kill_after(cli: Cli, delay: float, *args: str) -> int | None:
    """Start a call, SIGKILL it after ``delay`` s; its exit code if it ended first, else None."""
    proc = cli.popen(*args)
    time.sleep(delay)
    if proc.poll() is not None:
        proc.communicate()
        return proc.returncode
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return None


@pytest.mark.slow
def test_a_batch_file_killed_five_times_and_rerun_creates_each_record_once(
    portal: Sandbox, tmp_path: Path
) -> None:
    # A rerun waits until no request of a killed run can still be running on the portal: the
    # read timeout (short here, so the test is too; a chunk takes about 0.3 s).
    env = {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off", "B24_READ_TIMEOUT": "1.5"}
    cli = Cli(tmp_path, env)
    # Slow each create a little so the run spans enough time to be killed inside it.
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "error": None, "delay_ms": 8}]})
    calls = lead_creates(tmp_path / "calls.jsonl", "kill", LINES)
    rng = random.Random(13)
    killed, before = [], []
    for _ in range(5):
        moment = rng.uniform(0.5, 1.1)
        code = _kill_after(cli, moment, "--batch-file", str(calls), "--confirm-write")
        killed.append(code is None)
        before.append(len(portal.lead_titles("kill-")))
        time.sleep(1.5)  # the killed run's last requests are done on the portal by now
    final = cli("--batch-file", str(calls), "--confirm-write", "--output", "jsonl")
    titles = Counter(portal.lead_titles("kill-"))
    print(
        f"\n500-line batch file, 5 random SIGKILLs (killed mid-run: {sum(killed)}; records after "
        f"each: {before}); rerun exit {final.code}: {len(titles)} records, "
        f"{sum(c - 1 for c in titles.values())} doubled"
    )
    assert final.code == 0, final.err
    assert len(final.out.splitlines()) == LINES
    assert set(titles) == {f"kill-{n}" for n in range(1, LINES + 1)}
    assert max(titles.values()) == 1
    assert all(killed)  # every kill landed inside a run


@pytest.mark.slow
def test_fifty_killed_calls_leave_an_audit_chain_that_verifies(
    portal: Sandbox, tmp_path: Path
) -> None:
    cli = Cli.on_webhook(portal, tmp_path)
    assert cli("user.current").code == 0
    rng = random.Random(50)
    killed = launched = 0
    while killed < 50:  # five calls at once, each killed at a random moment near its end
        procs = [
            cli.popen(
                "crm.lead.add",
                "--params",
                json.dumps({"fields": {"TITLE": f"audit-kill-{launched + n}"}}),
                "--confirm-write",
            )
            for n in range(5)
        ]
        launched += len(procs)
        moments = sorted((rng.uniform(0.4, 1.3), n) for n in range(len(procs)))
        started = time.monotonic()
        for at, n in moments:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            if procs[n].poll() is None and killed < 50:
                procs[n].send_signal(signal.SIGKILL)
                killed += 1
            procs[n].communicate()
    run = cli("--verify-audit")
    report = run.json() if run.code == 0 else run.error()
    print(
        f"\n{launched} calls, {killed} killed by SIGKILL at random moments: --verify-audit "
        f"exit {run.code}: {report}"
    )
    assert run.code == 0, run.err
    after = cli("user.current")  # the next writer repairs what a kill left
    assert after.code == 0 and cli("--verify-audit").code == 0


@pytest.mark.slow
def test_a_create_killed_in_flight_is_not_sent_again_while_the_portal_may_run_it(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Killed while the portal still works on its create: a rerun at once would find nothing
    by ORIGIN_ID and create a second record when the first request lands. It is refused
    (retryable) until the read timeout has passed, then settled by the look-up."""
    env = {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off", "B24_READ_TIMEOUT": "3"}
    cli = Cli(tmp_path, env)
    portal.admin("faults", {"rules": [{"method": "crm.lead.add", "error": None, "delay_ms": 1500}]})
    args = ("crm.lead.add", "--params", '{"fields": {"TITLE": "in-flight"}}', "--confirm-write")
    assert _kill_after(cli, 1.0, *args, "--idempotency-key", "flight-1") is None
    early = cli(*args, "--idempotency-key", "flight-1")
    assert early.code == 5 and early.error()["code"] == "IDEMPOTENCY_KEY_IN_FLIGHT", early.err
    assert early.error()["retryable"] is True
    time.sleep(3.0)
    late = cli(*args, "--idempotency-key", "flight-1")
    assert late.code == 0, late.err
    assert len(portal.lead_titles("in-flight")) == 1
