"""SIGTERM and SIGHUP of a ``b24`` call, in-process (``B24_SERVER=off``) and through the warm
server: the call is interrupted the way Ctrl-C interrupts it, never ended on the spot.

Before, either signal killed the process (in-process) or the warm server's worker (warm) at
once: a write the portal ran left no audit line, and the caller got no error line. Now the
call writes its audit line, prints one error line and exits 128 + the signal (143 for SIGTERM,
129 for SIGHUP), as a shell reports a process that signal ended. The broker's path is in
test_broker_signals.py.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import FULL_EXPORT, Cli, Run, check, interrupt_when_stdout_full
from conftest import Sandbox

MODES = ("in-process", "warm")
SERVER_START_S = 30


@pytest.fixture(params=MODES)
def cli(request: pytest.FixtureRequest, portal: Sandbox, tmp_path: Path) -> Iterator[Cli]:
    """A CLI running each call in its own process, or one whose warm server is up."""
    if request.param == "in-process":
        yield Cli.on_webhook(portal, tmp_path)
        return
    with tempfile.TemporaryDirectory(prefix="b24t-") as runtime:  # socket paths: short
        warm = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "XDG_RUNTIME_DIR": runtime})
        assert warm("user.current").code == 0  # the cold call starts the server
        deadline = time.monotonic() + SERVER_START_S
        while not list(Path(runtime).glob("bitrix24-agent/*.sock")):
            assert time.monotonic() < deadline, "the warm server did not start"
            time.sleep(0.05)
        yield warm


def _audit(cli: Cli) -> list[dict[str, Any]]:
    logs = list(cli.state.rglob("audit.jsonl"))
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()]


def _signalled(
    cli: Cli, portal: Sandbox, method: str, signum: int, *args: str, sent_as: str = ""
) -> Run:
    """``b24 ARGS`` with the portal holding ``method``'s answer 1.5 s, sent ``signum`` once the
    portal has the request (``sent_as``: inside this one); its run, once the held answer has
    come (the write ran)."""
    portal.admin("faults", {"rules": [{"method": method, "error": None, "delay_ms": 1500}]})
    proc = cli.popen(*args)
    signaller = portal.once_sent(sent_as or method, lambda: proc.send_signal(signum))
    run = cli.finish(proc, within=60)
    signaller.join()
    time.sleep(2.0)  # the portal's held answer: the write runs whether anyone waits or not
    portal.admin("faults", {"rules": []})
    return run


def _interrupted(run: Run, signum: int) -> None:
    """Ended as an interruption by ``signum``: 128 + signum, one error line, nothing on stdout."""
    assert run.code == 128 + signum, (run.code, run.err)
    assert run.out == "" and len(run.err.splitlines()) == 1, (run.out, run.err)
    error = run.error()
    assert error["code"] == "INTERRUPTED" and signal.Signals(signum).name in error["message"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_a_write_is_in_flight_leaves_its_audit_line(
    cli: Cli, portal: Sandbox, signum: int
) -> None:
    title = f"terminated {signum}"
    params = json.dumps({"fields": {"TITLE": title}})
    args = ("crm.lead.add", "--params", params, "--confirm-write")
    run = _signalled(cli, portal, "crm.lead.add", signum, *args)
    assert len(portal.lead_titles(title)) == 1  # the portal ran the write
    _interrupted(run, signum)
    (line,) = [line for line in _audit(cli) if line["method"] == "crm.lead.add"]
    assert (line["outcome"], line["exit_code"]) == ("error", 128 + signum), line


def test_sigterm_during_a_batch_file_leaves_the_audit_line_of_what_was_sent(
    cli: Cli, portal: Sandbox
) -> None:
    calls = [
        {"method": "crm.lead.add", "params": {"fields": {"TITLE": f"file {n}"}}} for n in (1, 2)
    ]
    (cli.cwd / "calls.jsonl").write_text("".join(json.dumps(call) + "\n" for call in calls))
    args = ("--batch-file", "calls.jsonl", "--confirm-write")
    run = _signalled(cli, portal, "crm.lead.add", signal.SIGTERM, *args, sent_as="batch")
    assert portal.lead_titles("file ")  # the batch the signal came during ran
    assert run.code == 143 and run.error()["code"] == "INTERRUPTED", run.err
    audited = [line for line in _audit(cli) if line["method"] != "user.current"]
    assert audited and all(line["exit_code"] == 143 for line in audited), audited


def test_sigterm_ends_an_export_whose_stdout_is_full_with_its_audit_line(
    cli: Cli, portal: Sandbox
) -> None:
    portal.admin("seed", {"crm.lead": 1500})
    run = interrupt_when_stdout_full(cli.popen(*FULL_EXPORT), signal.SIGTERM)
    check(run)
    assert run.error()["code"] == "INTERRUPTED" and len(run.err.splitlines()) == 1, run.err
    (line,) = [line for line in _audit(cli) if line["method"] == "crm.lead.list"]
    assert line["outcome"] == "error", line  # the export abandoned as it stopped (GeneratorExit)


def test_sigterm_of_a_read_ends_it_without_waiting_for_the_answer(
    cli: Cli, portal: Sandbox
) -> None:
    """The portal would answer in 60 s; the call ends long before (``within`` fails a run
    still going after 30 s), with its audit line."""
    portal.admin("faults", {"rules": [{"method": "crm.lead.list", "delay_ms": 60000}]})
    proc = cli.popen("crm.lead.list")
    signaller = portal.once_sent("crm.lead.list", lambda: proc.send_signal(signal.SIGTERM))
    run = cli.finish(proc, within=30)
    signaller.join()
    portal.admin("faults", {"rules": []})
    _interrupted(run, signal.SIGTERM)
    assert [line["exit_code"] for line in _audit(cli) if line["outcome"] == "error"] == [143]
