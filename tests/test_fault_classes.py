"""Classes of fault an attacker of the CLI finds, each refused at the depth where it belongs.

- A write with --all/--limit is refused before anything is sent (it would repeat per page).
- Input no portal can take (NaN, Infinity, integers past 4,300 digits, nesting thousands deep,
  lone surrogates) is exit 2, with an audit line, never "a write may have run" (exit 7).
- A folder where a state file should be is exit 4, with an audit line, nothing sent.
- Batch-file lines end at "\\n" only, not at U+2028 / U+0085 inside a JSON string.
- B24_MAX_OPERATING_WAIT_SEC caps the time one call is held for OPERATION_TIME_LIMIT in total.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from b24agent.backends import bucket
from b24agent.errors import OperationTimeLimitError
from b24agent.fingerprint import digest
from cli_support import Cli
from client_support import client_for
from conftest import Sandbox


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli.on_webhook(portal, tmp_path)


def _audit_lines(cli: Cli) -> list[dict[str, Any]]:
    (log,) = cli.state.glob("*/audit.jsonl")
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def _sent(portal: Sandbox, method: str) -> int:
    return portal.stats().get("by_method", {}).get(method, 0)


@pytest.mark.parametrize("flag", [("--all",), ("--limit", "5")])
def test_a_write_with_all_or_limit_is_refused_before_sending(
    portal: Sandbox, cli: Cli, flag: tuple[str, ...]
) -> None:
    run = cli(
        "crm.lead.add", "--params", '{"fields": {"TITLE": "paged"}}', "--confirm-write", *flag
    )
    assert run.code == 2 and run.error()["code"] == "EXPORT_OF_WRITE", run.err
    assert _sent(portal, "crm.lead.add") == 0
    assert portal.rest("crm.lead.list", {"filter": {"TITLE": "paged"}}).json()["result"] == []
    assert _audit_lines(cli)[-1]["exit_code"] == 2


DEEP = '{"fields": {"TITLE": ' + "[" * 3000 + "]" * 3000 + "}}"
DEEP_PARSEABLE = '{"fields": {"TITLE": ' + "[" * 500 + "]" * 500 + "}}"
HUGE_INT = '{"fields": {"TITLE": "x", "OPPORTUNITY": ' + "9" * 5000 + "}}"
SURROGATE_VALUE = '{"fields": {"TITLE": "\\ud800"}}'
SURROGATE_KEY = '{"fields": {"\\udc00TITLE": "x"}}'
NAN = '{"fields": {"TITLE": "x", "OPPORTUNITY": NaN}}'
INFINITY = '{"fields": {"TITLE": "x", "OPPORTUNITY": -Infinity}}'


@pytest.mark.parametrize(
    "params",
    [DEEP, DEEP_PARSEABLE, HUGE_INT, SURROGATE_VALUE, SURROGATE_KEY, NAN, INFINITY],
    ids=["deep", "deep-parseable", "huge-int", "surrogate", "surrogate-key", "nan", "infinity"],
)
def test_params_no_portal_can_take_are_exit_2_and_nothing_is_sent(
    portal: Sandbox, cli: Cli, params: str
) -> None:
    run = cli("crm.lead.add", "--params", params, "--confirm-write")
    assert run.code == 2, run.err
    assert run.error()["code"] in ("INVALID_JSON", "INVALID_PARAMS")
    assert _sent(portal, "crm.lead.add") == 0


@pytest.mark.parametrize("params", [DEEP_PARSEABLE, SURROGATE_VALUE, SURROGATE_KEY])
def test_refused_params_still_get_their_audit_line(cli: Cli, params: str) -> None:
    """Params that reach the guard (parseable JSON) are refused there, and audited."""
    run = cli("crm.lead.add", "--params", params, "--confirm-write")
    assert run.code == 2, run.err
    last = _audit_lines(cli)[-1]
    assert last["error"] == "INVALID_PARAMS" and last["exit_code"] == 2
    assert cli("--verify-audit").code == 0


def test_a_batch_file_line_with_nan_is_refused_before_any_line_is_sent(
    portal: Sandbox, cli: Cli
) -> None:
    calls = cli.cwd / "calls.jsonl"
    good = json.dumps({"method": "crm.lead.add", "params": {"fields": {"TITLE": "ok"}}})
    calls.write_text(good + '\n{"method": "crm.lead.add", "params": {"id": NaN}}\n')
    run = cli("--batch-file", str(calls), "--confirm-write")
    assert run.code == 2 and "line 2" in run.error()["message"], run.err
    assert _sent(portal, "batch") == 0


def test_a_folder_where_a_state_file_should_be_is_exit_4_with_an_audit_line(
    portal: Sandbox, cli: Cli
) -> None:
    assert cli("user.current").code == 0  # creates the portal's state folder
    (portal_dir,) = cli.state.glob("*/audit.jsonl")
    record = portal_dir.parent / "idempotency" / f"{digest('form-9')}.json"
    record.mkdir(parents=True)
    run = cli(
        "crm.lead.add",
        "--params",
        '{"fields": {"TITLE": "blocked"}}',
        "--confirm-write",
        "--idempotency-key",
        "form-9",
    )
    # state.py refuses a non-regular state file before reading it (issue 20's STATE_UNSAFE).
    assert run.code == 4 and run.error()["code"] == "STATE_UNSAFE", run.err
    assert str(record) in run.error()["message"]
    assert _sent(portal, "crm.lead.add") == 0
    last = _audit_lines(cli)[-1]
    assert last["method"] == "crm.lead.add" and last["exit_code"] == 4


def test_batch_file_lines_end_at_newline_only(portal: Sandbox, cli: Cli) -> None:
    """U+2028, U+2029 and U+0085 are legal unescaped inside JSON strings; splitting on them
    cut one call into two broken lines."""
    titles = ["a\u2028b", "c\u0085d", "e\u2029f"]
    calls = cli.cwd / "calls.jsonl"
    calls.write_text(
        "".join(
            json.dumps({"method": "crm.lead.add", "params": {"fields": {"TITLE": t}}})
            .replace("\\u2028", "\u2028")
            .replace("\\u0085", "\u0085")
            .replace("\\u2029", "\u2029")
            + "\n"
            for t in titles
        ),
        encoding="utf-8",
    )
    assert "\u2028" in calls.read_text(encoding="utf-8")
    run = cli("--batch-file", str(calls), "--confirm-write", "--output", "jsonl")
    assert run.code == 0, run.err
    assert [json.loads(line)["line"] for line in run.out.splitlines()] == [1, 2, 3]
    stored = portal.rest("crm.lead.list", {"select": ["TITLE"], "order": {"ID": "ASC"}}).json()
    assert [row["TITLE"] for row in stored["result"]] == titles


def test_the_operating_wait_cap_is_a_total_for_the_call(
    portal: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OPERATION_TIME_LIMIT without operating_reset_at holds the method an assumed minute (here
    0.4 s); a call may be held that long once under a 0.5 s cap, not once per retry."""
    monkeypatch.setattr(bucket, "UNKNOWN_RESET_S", 0.4)
    portal.admin(
        "faults",
        {"rules": [{"method": "crm.lead.get", "error": "OPERATION_TIME_LIMIT", "status": 429}]},
    )
    client = client_for(portal, tmp_path, rate_limiter="memory", max_operating_wait_s=0.5)
    with client, pytest.raises(OperationTimeLimitError):
        client.call("crm.lead.get", {"id": 1})
    # One attempt, one held retry; with the cap per attempt it was one plus max_retries (5).
    assert _sent(portal, "crm.lead.get") == 2
