"""The b24 CLI as agents use it: bitrix24_client.py run as a subprocess against the sandbox.

Every run is checked for the shell contract on top of what each test asserts: no traceback, no
secret in any output, and on failure exactly one JSON error line on stderr.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cli_support
import pytest
from b24agent.cli.client import build_parser
from cli_support import ERROR_KEYS, SCRIPT
from client_support import oauth_env, secrets_of
from conftest import Sandbox


class Run(cli_support.Run):
    """cli_support's Run, stricter: a failed run's stderr must be exactly one JSON line."""

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]

    def error(self) -> dict[str, Any]:
        return json.loads(self.err)["error"]


class Cli:
    """Runs the script with a private state folder and home, from an empty working folder."""

    def __init__(self, tmp_path: Path, env: dict[str, str], secrets: list[str]) -> None:
        self.cwd = tmp_path / "work"
        self.cwd.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
        self.env.update(
            HOME=str(tmp_path),
            B24_STATE_DIR=str(self.state),
            B24_RETRY_BASE_SEC="0.01",
            B24_RETRY_MAX_SEC="0.05",
            **env,
        )
        self.secrets = secrets

    def popen(self, *args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            text=True,
            **kw,
        )

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        secret_in_stdout: bool = False,
    ) -> Run:
        proc = self.popen(*args, env=env, stdin=subprocess.PIPE)
        out, err = proc.communicate(stdin, timeout=120)
        run = Run(proc.returncode, out, err)
        self.check(run, secret_in_stdout=secret_in_stdout)
        return run

    def check(self, run: Run, *, secret_in_stdout: bool = False) -> None:
        assert "Traceback" not in run.err, run.err
        for secret in self.secrets:
            assert secret not in run.err
            assert secret_in_stdout or secret not in run.out
        if run.code != 0:
            assert len(run.err.splitlines()) == 1, run.err
            assert set(run.error()) == ERROR_KEYS


def _oauth_env(portal: Sandbox) -> dict[str, str]:
    """The OAuth credentials alone: the Cli sets its own state folder and HOME."""
    env = oauth_env(portal, Path("unused"))
    return {k: v for k, v in env.items() if k not in ("B24_STATE_DIR", "HOME")}


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url}, secrets_of(portal))


@pytest.fixture
def oauth_cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, _oauth_env(portal), secrets_of(portal))


def _requests(portal: Sandbox) -> int:
    return portal.stats()["requests"]


def _leads_titled(portal: Sandbox, title: str) -> list[dict[str, Any]]:
    return portal.rest("crm.lead.list", {"filter": {"TITLE": title}}).json()["result"]


def _faults(portal: Sandbox, *rules: dict[str, Any]) -> None:
    portal.admin("faults", {"rules": list(rules)})


# --- help and usage --------------------------------------------------------------------------


def test_help_lists_every_flag_with_an_example_and_the_exit_codes(cli: Cli) -> None:
    run = cli("--help")
    assert run.code == 0 and run.err == ""
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in run.out
        if action.option_strings and action.dest != "help":
            assert "e.g." in (action.help or ""), action.option_strings
    assert "examples:" in run.out and "--batch-file calls.jsonl" in run.out
    codes = run.out.split("exit codes:", 1)[1].split()
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "130"):
        assert code in codes


def test_cold_help_imports_neither_requests_nor_jsonschema(cli: Cli) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        env={**cli.env, "B24_SERVER": "off"},
        cwd=cli.cwd,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "b24agent.cli.client" in imported
    assert not {"requests", "jsonschema", "b24agent.catalog.loader"} & imported


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "--bogus"),
        (["crm.lead.list", "--limit", "0"], "--limit"),
        (["crm.lead.list", "--output", "xml"], "--output"),
        ([], "METHOD"),
        (["crm.lead.list", "--batch-file", "x.jsonl"], "--batch-file"),
        (["crm.lead.list", "--parallel", "4"], "--parallel"),
        (["--batch-file", "x.jsonl", "--parallel", "0"], "--parallel"),
    ],
)
def test_usage_errors_are_one_json_line_and_exit_2(cli: Cli, args: list[str], says: str) -> None:
    run = cli(*args)
    assert run.code == 2 and run.out == ""
    assert says in run.error()["message"]


# --- output modes and params -------------------------------------------------------------------


def test_output_modes(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 3})
    args = ("crm.lead.list", "--params", '{"select": ["ID", "TITLE"]}')
    whole = cli(*args)
    assert whole.code == 0, whole.err
    body = whole.json()
    assert body["total"] == 3 and "time" in body and "\n  " in whole.out
    assert [row["ID"] for row in body["result"]] == ["1", "2", "3"]
    result = cli(*args, "--output", "result")
    assert result.json() == body["result"]
    jsonl = cli(*args, "--output", "jsonl")
    assert jsonl.lines() == body["result"]
    compact = cli(*args, "--compact")
    assert compact.out.count("\n") == 1 and compact.json()["result"] == body["result"]


def test_params_inline_file_and_stdin_agree(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 2})
    (cli.cwd / "p.json").write_text('{"id": 2}')
    inline = cli("crm.lead.get", "--params", '{"id": 2}', "--output", "result")
    from_file = cli("crm.lead.get", "--params", "@p.json", "--output", "result")
    from_stdin = cli("crm.lead.get", "--params", "-", "--output", "result", stdin='{"id": 2}')
    assert inline.code == from_file.code == from_stdin.code == 0
    assert inline.json()["ID"] == "2"
    assert inline.json() == from_file.json() == from_stdin.json()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('{"id": ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("@missing.json", "missing.json"),
        ('{"id": 1, "fields": 5}', "fields"),
    ],
)
def test_bad_params_exit_2_before_any_request(
    portal: Sandbox, cli: Cli, value: str, says: str
) -> None:
    before = _requests(portal)
    run = cli("crm.lead.update", "--params", value, "--confirm-write")
    assert run.code == 2 and run.out == ""
    assert says in run.error()["message"]
    assert _requests(portal) == before


def test_batch_method_runs_with_cmd_params(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 1})
    cmd = {"cmd": {"lead": "crm.lead.get?id=1", "me": "user.current"}}
    run = cli("batch", "--params", json.dumps(cmd), "--output", "result")
    assert run.code == 0, run.err
    assert run.json()["result"]["lead"]["ID"] == "1"
    assert run.json()["result"]["me"]["ID"] == "1"


# --- full export -------------------------------------------------------------------------------


def test_export_streams_every_row_exactly_once(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 10_000})
    before = _requests(portal)
    run = cli("crm.lead.list", "--all", "--output", "jsonl", "--params", '{"select": ["ID"]}')
    assert run.code == 0 and run.err == ""  # no progress noise when stderr is not a terminal
    ids = [int(row["ID"]) for row in run.lines()]
    assert len(ids) == 10_000 and set(ids) == set(range(1, 10_001))
    assert _requests(portal) - before <= math.ceil(10_000 / 2500) + 1


def test_limit_and_the_export_document_forms(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 300})
    args = ("crm.lead.list", "--params", '{"select": ["ID"]}')
    lines = cli(*args, "--limit", "120", "--output", "jsonl").lines()
    assert [int(row["ID"]) for row in lines] == list(range(1, 121))
    document = cli(*args, "--all", "--limit", "120").json()
    assert document == {"result": lines, "total": 120}
    assert cli(*args, "--limit", "120", "--output", "result", "--compact").json() == lines


def test_export_of_a_method_without_rows_fails_with_empty_stdout(cli: Cli) -> None:
    run = cli("user.current", "--all")
    assert run.code == 2 and run.out == ""
    assert "user.current" in run.error()["message"]


def test_progress_shows_only_on_a_terminal(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 6000})
    master, slave = os.openpty()
    proc = cli.popen("crm.lead.list", "--all", "--output", "jsonl", stderr=slave)
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0 and len(out.splitlines()) == 6000
    assert "exported 2500 rows..." in shown and "exported 6000 rows..." in shown


def test_head_closing_the_pipe_ends_quietly_with_exit_0(portal: Sandbox, cli: Cli) -> None:
    """The reader chose to stop: no error line, no 130, and the export stopped fetching."""
    portal.admin("seed", {"crm.lead": 10_000})
    proc = cli.popen("crm.lead.list", "--all", "--output", "jsonl")
    head = subprocess.Popen(["head", "-1"], stdin=proc.stdout, stdout=subprocess.PIPE, text=True)
    proc.stdout.close()  # only head holds the pipe now, as in a shell
    first, _ = head.communicate(timeout=60)
    err = proc.stderr.read()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert json.loads(first)["ID"] == "1"
    run = Run(proc.returncode, "", err)
    cli.check(run)
    assert (run.code, run.err) == (0, "")
    assert portal.stats()["requests"] < 10_000 / 2500  # it did not fetch every page


# --- batch files ---------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_batch_file_of_120_writes_takes_3_requests(portal: Sandbox, cli: Cli) -> None:
    rows = [
        {"method": "crm.lead.add", "params": {"fields": {"TITLE": f"b{i}"}}} for i in range(120)
    ]
    _write_jsonl(cli.cwd / "calls.jsonl", rows)
    before = _requests(portal)
    run = cli("--batch-file", "calls.jsonl", "--confirm-write")
    assert run.code == 0 and run.err == ""
    assert _requests(portal) - before == 3
    lines = run.lines()
    assert [line["line"] for line in lines] == list(range(1, 121))
    ids = [line["result"] for line in lines]
    assert len(set(ids)) == 120
    for i in (0, 49, 50, 119):  # each chunk's calls landed, in file order
        lead = portal.rest("crm.lead.get", {"id": ids[i]}).json()["result"]
        assert lead["TITLE"] == f"b{i}"


def test_batch_file_reports_each_failure_in_place(portal: Sandbox, cli: Cli) -> None:
    portal.admin("seed", {"crm.lead": 10})
    rows = [
        {"method": "crm.lead.get", "params": {"id": i if i != 7 else 999_999}} for i in range(1, 11)
    ]
    run = cli(
        "--batch-file", "-", "--output", "jsonl", stdin="".join(json.dumps(r) + "\n" for r in rows)
    )
    assert run.code == 1
    lines = run.lines()
    assert [line["line"] for line in lines] == list(range(1, 11))
    assert set(lines[6]) == {"line", "method", "error"} and lines[6]["error"]["message"]
    assert all(line["result"]["ID"] == str(line["line"]) for i, line in enumerate(lines) if i != 6)
    assert "1 of 10 calls failed" in run.error()["message"]
    assert "line 7" in run.error()["message"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"params": {"id": 1}}, "method"),
        ({"method": "crm.lead.get", "params": [1]}, "params"),
        ({"method": "crm.lead.get", "extra": 1}, "extra"),
        ({"method": "crm lead get"}, "method"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_batch_line_exit_2_names_line_and_field_before_any_request(
    portal: Sandbox, cli: Cli, bad: Any, says: str
) -> None:
    good = {"method": "crm.lead.get", "params": {"id": 1}}
    lines = [json.dumps(good)] * 4 + [bad if isinstance(bad, str) else json.dumps(bad)]
    (cli.cwd / "calls.jsonl").write_text("\n".join(lines) + "\n")
    before = _requests(portal)
    run = cli("--batch-file", "calls.jsonl")
    assert run.code == 2 and run.out == ""
    message = run.error()["message"]
    assert "line 5" in message and says in message
    assert _requests(portal) == before


# --- exit codes ----------------------------------------------------------------------------------


def test_exit_1_when_the_portal_refuses(cli: Cli) -> None:
    run = cli("crm.lead.get", "--params", '{"id": 999999}')
    assert run.code == 1 and run.out == ""
    assert "Not found" in run.error()["message"] and run.error()["retryable"] is False


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["crm.lead.add", "--params", '{"fields": {"TITLE": "gate"}}'], "--confirm-write"),
        (["crm.lead.delete", "--params", '{"id": 1}', "--confirm-write"], "--confirm-destructive"),
        (["no.such.method", "--allow-unlisted"], "B24_ALLOW_FLAGS"),
        (
            ["batch", "--params", '{"cmd": {"a": "user.current", "b": "crm.lead.delete?id=1"}}'],
            "--confirm-destructive",
        ),
    ],
)
def test_exit_3_names_the_flag_and_sends_nothing(
    portal: Sandbox, cli: Cli, args: list[str], flag: str
) -> None:
    portal.admin("seed", {"crm.lead": 1})
    before = _requests(portal)
    run = cli(*args)
    assert run.code == 3 and run.out == ""
    error = run.error()
    assert flag in error["message"] + error["hint"]
    assert _requests(portal) == before
    assert len(portal.rest("crm.lead.list").json()["result"]) == 1


def test_exit_4_without_a_portal_configured(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if k != "B24_WEBHOOK_URL"}
    cli.env = env
    run = cli("user.current")
    assert run.code == 4 and "B24_" in run.error()["message"]
    insecure = cli(
        "user.current", env={"B24_WEBHOOK_URL": "http://portal.example.com/rest/1/abcdefghij/"}
    )
    assert insecure.code == 4 and "abcdefghij" not in insecure.err


@pytest.mark.parametrize("pattern", ["*/oauth-*.json", "*/ratelimit.json"])
def test_exit_4_names_a_corrupt_state_file(oauth_cli: Cli, pattern: str) -> None:
    assert oauth_cli("user.current").code == 0
    (store,) = oauth_cli.state.glob(pattern)
    store.write_text('{"access_token": "half-writ')
    run = oauth_cli("user.current")
    assert run.code == 4 and run.out == ""
    assert str(store) in run.error()["message"]


def test_exit_6_when_a_read_keeps_hitting_the_rate_limit(portal: Sandbox, cli: Cli) -> None:
    _faults(portal, {"method": "crm.lead.get", "error": "QUERY_LIMIT_EXCEEDED", "status": 503})
    run = cli("crm.lead.get", "--params", '{"id": 1}')
    assert run.code == 6 and run.out == ""
    assert run.error()["code"] == "QUERY_LIMIT_EXCEEDED" and run.error()["retryable"] is True


def test_exit_7_when_a_write_ran_but_answered_500(portal: Sandbox, cli: Cli) -> None:
    _faults(portal, {"method": "crm.lead.add", "after": True, "times": 1})
    run = cli("crm.lead.add", "--params", '{"fields": {"TITLE": "maybe"}}', "--confirm-write")
    assert run.code == 7 and run.out == ""
    assert len(_leads_titled(portal, "maybe")) == 1


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ({"body": "<html><body>502 Bad Gateway</body></html>", "status": 502}, 6),
        ({"body": "<html>maintenance</html>", "status": 200}, 6),
        ({"body": '{"result": {"ID": "1", ', "status": 200, "content_type": "application/json"}, 6),
        ({"body": "Internal Server Error", "status": 500, "content_type": "text/plain"}, 6),
    ],
)
def test_malformed_answers_give_one_line_errors(
    portal: Sandbox, cli: Cli, rule: dict[str, Any], code: int
) -> None:
    portal.admin("seed", {"crm.lead": 1})
    _faults(portal, {"method": "crm.lead.get", **rule})
    run = cli("crm.lead.get", "--params", '{"id": 1}')
    assert run.code == code and run.out == ""
    assert "HTTP" in run.error()["message"]


def test_malformed_answer_to_a_write_is_outcome_unknown(portal: Sandbox, cli: Cli) -> None:
    _faults(portal, {"method": "crm.lead.add", "body": "<html>oops</html>", "status": 500})
    run = cli("crm.lead.add", "--params", '{"fields": {"TITLE": "h"}}', "--confirm-write")
    assert run.code == 7 and run.error()["retryable"] is False


def test_ctrl_c_exits_130_with_one_line(portal: Sandbox, cli: Cli) -> None:
    _faults(portal, {"method": "crm.lead.get", "error": None, "delay_ms": 5000})
    proc = cli.popen("crm.lead.get", "--params", '{"id": 1}')
    deadline = time.monotonic() + 30
    while portal.stats()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    run = Run(proc.returncode, out, err)
    cli.check(run)
    assert run.code == 130 and run.error()["code"] == "INTERRUPTED"


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_masked_on_stdout_unless_asked_and_always_on_stderr(
    portal: Sandbox, cli: Cli
) -> None:
    code = portal.webhook["code"]
    lead_id = portal.rest("crm.lead.add", {"fields": {"TITLE": f"<{code}>"}}).json()["result"]
    params = json.dumps({"id": lead_id})
    masked = cli("crm.lead.get", "--params", params, "--output", "result")
    assert masked.json()["TITLE"] == "<***>"
    plain = cli(
        "crm.lead.get",
        "--params",
        params,
        "--output",
        "result",
        "--no-mask-secrets",
        secret_in_stdout=True,
        env={"B24_ALLOW_FLAGS": "no-mask-secrets"},
    )
    assert plain.json()["TITLE"] == f"<{code}>"
    _faults(
        portal,
        {
            "method": "crm.lead.get",
            "error": "ERROR_CORE",
            "description": f"echo {code}",
            "status": 400,
        },
    )
    refused = cli(
        "crm.lead.get",
        "--params",
        params,
        "--no-mask-secrets",
        env={"B24_ALLOW_FLAGS": "no-mask-secrets"},
    )
    assert refused.code == 1 and "echo ***" in refused.error()["message"]


def test_oauth_tokens_never_printed_even_after_a_refresh(portal: Sandbox, oauth_cli: Cli) -> None:
    assert oauth_cli("user.current").code == 0
    portal.admin("expire-tokens")
    runs = [oauth_cli("user.current"), oauth_cli("crm.lead.get", "--params", '{"id": 424242}')]
    assert [run.code for run in runs] == [0, 1]
    assert portal.stats()["token_refreshes"] == 1
    (store,) = oauth_cli.state.glob("*/oauth-*.json")
    fresh = json.loads(store.read_text())
    new = [fresh["access_token"], fresh["refresh_token"]]
    assert not set(new) & set(oauth_cli.secrets)
    for run in runs:
        assert not any(token in run.out + run.err for token in new)


# --- catalog look-ups ---------------------------------------------------------------------------


def test_explain_and_list_packs_need_no_portal(cli: Cli) -> None:
    cli.env = {k: v for k, v in cli.env.items() if k != "B24_WEBHOOK_URL"}
    explained = cli("--explain", "crm.lead.add", "crm.lead.delete", "user.current")
    assert explained.code == 0
    assert [(e["method"], e["risk"]) for e in explained.lines()] == [
        ("crm.lead.add", "write"),
        ("crm.lead.delete", "destructive"),
        ("user.current", "read"),
    ]
    packs = cli("--list-packs").json()
    assert "core" in {pack["pack"] for pack in packs}
