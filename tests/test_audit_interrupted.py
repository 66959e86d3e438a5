"""An interruption that strikes after the portal answered, before the audit line is written.

The broker relays its caller's first signal as one Ctrl-C (and ignores the rest); a signal
landing between the answer and the audit write used to end the call with no line at all, for
a call the portal had run. It must leave the line of the interruption instead.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from b24agent.guard import pipeline as pipeline_module
from b24agent.guard.pipeline import Call, CallRequest, Guards, Pipeline
from client_support import settings_for
from conftest import Sandbox


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
