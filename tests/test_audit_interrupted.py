"""An interruption that strikes after the portal answered, before the audit line is written.

The broker relays its caller's first signal as one Ctrl-C (and ignores the rest); a signal
landing between the answer and the audit write used to end the call with no line at all, for
a call the portal had run. It must leave the line of the interruption instead.

And one that strikes while another process holds the audit log's lock (a stuck writer): it
used to be held until the lock's timeout (60 s); it must end the call at once and keep the
call's line for the next writer.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import ConfigError
from b24agent.guard import pipeline as pipeline_module
from b24agent.guard.audit import kept_folder
from b24agent.guard.pipeline import Call, CallRequest, Guards, Pipeline
from b24agent.rest.inflight import InFlight
from cli_support import Cli, Run, check
from client_support import settings_for
from conftest import Sandbox, lock_held_elsewhere, signal_once_answered


def _lines(settings: Any) -> list[dict[str, Any]]:
    path = Path(settings.audit_file)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("mode", "method", "sent_as"),
    # An export reads its pages through id-chained batches.
    [("call", "user.current", "user.current"), ("export", "crm.lead.list", "batch")],
)
def test_a_signal_after_the_answer_leaves_the_interruptions_audit_line(
    portal: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    method: str,
    sent_as: str,
) -> None:
    settings = settings_for(portal, tmp_path / "state")
    before = portal.sent(sent_as)
    opened = pipeline_module.AuditLog.of
    raised: list[int] = []

    def interrupted_once(*args: Any, **kwargs: Any) -> Any:
        if not raised:  # the caller's signal, relayed once (SIGINT raises KeyboardInterrupt)
            raised.append(1)
            signal.raise_signal(signal.SIGINT)
        return opened(*args, **kwargs)

    monkeypatch.setattr(pipeline_module.AuditLog, "of", interrupted_once)
    request = CallRequest(mode, (Call(method),), guards=Guards())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt), Pipeline(settings) as pipeline:
        outcome = pipeline.run(request)
        if outcome.stream is not None:
            list(outcome.stream)
    assert raised and portal.sent(sent_as) > before  # the portal answered the call
    lines = _lines(settings)
    assert len(lines) == 1, lines
    assert (lines[0]["method"], lines[0]["exit_code"]) == (method, 130)
    assert lines[0]["error"] == "KeyboardInterrupt"


def test_without_a_signal_the_call_leaves_one_line_of_success(
    portal: Sandbox, tmp_path: Path
) -> None:
    settings = settings_for(portal, tmp_path / "state")
    with Pipeline(settings) as pipeline:
        pipeline.run(CallRequest("call", (Call("user.current"),)))
    lines = _lines(settings)
    assert [(line["outcome"], line["exit_code"]) for line in lines] == [("ok", 0)]


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ctrl_c_while_another_process_holds_the_audit_log_ends_the_call_at_once(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Plain CLI: the call's line is kept and the next call appends it to the chain."""
    cli = Cli.on_webhook(portal, tmp_path)
    assert cli("user.current").code == 0
    audit = next(cli.state.rglob("audit.jsonl"))
    with lock_held_elsewhere(Path(f"{audit}.lock")):
        start = functools.partial(cli.popen, "user.current")
        call, out, err, waited = signal_once_answered(portal, "user.current", start, signal.SIGINT)
        assert len(_audit_lines(audit)) == 1
    run = Run(call.returncode, out, err)
    check(run)
    assert waited < 3, waited
    # The old code ended at once too (another thread took the signal), but lost the line.
    assert run.code == 130 and run.out == ""
    error = run.error()
    assert error["code"] == "INTERRUPTED" and "ended 'ok' (exit 0)" in error["message"]
    assert str(kept_folder(audit)) in error["message"]
    assert cli("user.current").code == 0  # the next writer appends the kept line first
    lines = _audit_lines(audit)
    assert [(line["method"], line["outcome"], line["exit_code"]) for line in lines] == [
        ("user.current", "ok", 0)
    ] * 3
    assert len({line["request_id"] for line in lines}) == 3
    assert list(kept_folder(audit).iterdir()) == []
    assert cli("--verify-audit").json()["ok"] is True


def test_a_lock_never_freed_keeps_the_line_too(
    portal: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No signal: the wait ends at the lock's timeout (cut to 0.3 s here), the call reports the
    log it could not write (exit 4) and its line waits for the next writer."""
    settings = settings_for(portal, tmp_path / "state")
    with Pipeline(settings) as pipeline:
        pipeline.run(CallRequest("call", (Call("user.current"),)))
    audit = Path(settings.audit_file)
    monkeypatch.setattr(pipeline_module, "LOCK_TIMEOUT_S", 0.3)
    with (
        lock_held_elsewhere(Path(f"{audit}.lock")),
        Pipeline(settings) as pipeline,
        pytest.raises(ConfigError) as failed,
    ):
        pipeline.run(CallRequest("call", (Call("user.current"),)))
    assert failed.value.code == "AUDIT_UNWRITABLE" and str(kept_folder(audit)) in str(failed.value)
    with Pipeline(settings) as pipeline:
        pipeline.run(CallRequest("call", (Call("user.current"),)))
    assert [line["outcome"] for line in _audit_lines(audit)] == ["ok"] * 3


def _blocked(thread: threading.Thread) -> set[int]:
    """The signals ``thread`` blocks, from the kernel (SigBlk, a hex mask of bits 1..64)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_calls_own_threads_leave_ctrl_c_to_the_main_thread(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Ctrl-C sent to a process goes to any thread not blocking it, and then interrupts the
    main thread even while it holds the signal to write an audit line: the threads a call
    starts (the answer deadline's keeper, requests in flight) must block it."""
    interrupts = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    with Pipeline(settings_for(portal, tmp_path / "state")) as pipeline:
        pipeline.run(CallRequest("call", (Call("user.current"),)))
    keeper = next(t for t in threading.enumerate() if t.name == "b24-answer-deadline")
    assert interrupts <= _blocked(keeper)
    in_flight = InFlight(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert interrupts <= set(in_flight.result())
