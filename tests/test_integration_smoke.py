"""Smoke checks through the CLI, against a real portal when asked and the sandbox otherwise.

Real portal: ``B24_RUN_INTEGRATION=1`` plus real ``B24_*`` settings (environment, the state
folder's ``.env``, or a ``.env`` in the repository root, which the test names as B24_ENV_FILE). The
read probes (``user.current``, ``crm.lead.list``, ``scope``, ``method.get``) need a webhook or app
with the ``crm`` and ``user`` scopes. ``B24_SMOKE_WRITE=1`` adds a lead add/update/delete cycle;
its lead carries the TITLE prefix ``b24agent-smoke`` and ``ORIGINATOR_ID=b24agent-smoke`` so a
failed run's leftovers are easy to find, and the test deletes what it created. OAuth settings (an
app installed by an admin) add a read of the offline queue (``event.offline.list``, which reserves
nothing). Live runs keep the user's ``B24_STATE_DIR`` so the OAuth token store stays the one every
process shares.

Without ``B24_RUN_INTEGRATION`` the same checks run against the sandbox the ``portal`` fixture
starts, with exact expectations where the sandbox's contents are known, so this file always runs.

The last tests run ``python -m b24agent.cli.demo`` (what ``make demo`` runs) end to end.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import Run
from conftest import ROOT, Sandbox

SCRIPT = ROOT / "skills" / "bitrix24-agent" / "scripts" / "bitrix24_client.py"
LIVE = os.environ.get("B24_RUN_INTEGRATION") == "1"
LIVE_WRITES = os.environ.get("B24_SMOKE_WRITE") == "1"
TAG = "b24agent-smoke"
#: Fixed for the smoke run: the probes need the diagnostics pack; plans are tested elsewhere.
GUARD_ENV = {"B24_PACKS": "core,diagnostics", "B24_REQUIRE_PLAN": "0"}
SANDBOX_LEADS = 3
SANDBOX_OFFLINE_EVENTS = 4


@dataclass
class Target:
    """Where the checks run: CLI environments and what is known about the portal's contents."""

    env: dict[str, str]
    cwd: Path
    secrets: list[str]
    oauth_env: dict[str, str] | None = None
    writes: bool = True
    sandbox: Sandbox | None = None
    created: list[int] = field(default_factory=list)

    def cli(self, *args: str, oauth: bool = False) -> Run:
        """Run the CLI as a subprocess; every run must keep secrets out of its output."""
        env = self.oauth_env if oauth else self.env
        assert env is not None
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--compact"],
            env=env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for secret in self.secrets:
            assert secret not in done.stdout + done.stderr, "a secret reached the output"
        assert "Traceback" not in done.stderr
        return Run(done.returncode, done.stdout, done.stderr)


def _live_target() -> Target:
    from b24agent.settings import load_settings

    dotenv = ROOT / ".env"  # named as the operator's file, so the CLI below reads it too
    named = (
        {"B24_ENV_FILE": str(dotenv)}
        if dotenv.is_file() and "B24_ENV_FILE" not in os.environ
        else {}
    )
    env = {**os.environ, **named, **GUARD_ENV}
    settings = load_settings(environ=env)
    return Target(
        env=env,
        cwd=ROOT,
        secrets=settings.secrets(),
        oauth_env=env if settings.auth_mode == "oauth" else None,
        writes=LIVE_WRITES,
    )


def _sandbox_target(portal: Sandbox, tmp_path: Path) -> Target:
    base = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    base.update(GUARD_ENV, HOME=str(tmp_path), B24_STATE_DIR=str(tmp_path / "state"))
    oauth = portal.oauth
    portal.admin("seed", {"crm.lead": SANDBOX_LEADS})
    return Target(
        env={**base, "B24_WEBHOOK_URL": portal.webhook_url},
        cwd=tmp_path,
        secrets=[portal.webhook["code"]]
        + [oauth[k] for k in ("client_secret", "access_token", "refresh_token")]
        + [oauth["application_token"]],
        oauth_env={
            **base,
            "B24_AUTH_MODE": "oauth",
            "B24_DOMAIN": portal.url,
            "B24_OAUTH_SERVER": oauth["server"],
            "B24_CLIENT_ID": oauth["client_id"],
            "B24_CLIENT_SECRET": oauth["client_secret"],
            "B24_ACCESS_TOKEN": oauth["access_token"],
            "B24_REFRESH_TOKEN": oauth["refresh_token"],
        },
        sandbox=portal,
    )


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    chosen = (
        _live_target() if LIVE else _sandbox_target(request.getfixturevalue("portal"), tmp_path)
    )
    yield chosen
    for lead_id in chosen.created:  # clean up after a failed write cycle
        chosen.cli(
            "crm.lead.delete", "--params", json.dumps({"id": lead_id}), "--confirm-destructive"
        )


# --- read probes ---------------------------------------------------------------------------


def test_user_current_names_the_webhook_or_app_user(target: Target) -> None:
    run = target.cli("user.current", "--output", "result")
    assert run.code == 0, run.err
    user = run.json()
    assert int(user["ID"]) > 0
    if target.sandbox:
        assert user["ID"] == str(target.sandbox.webhook["user_id"])


def test_crm_lead_list_returns_a_page_and_a_total(target: Target) -> None:
    params = {"select": ["ID", "TITLE"], "order": {"ID": "DESC"}}
    run = target.cli("crm.lead.list", "--params", json.dumps(params))
    assert run.code == 0, run.err
    body = run.json()
    rows = body["result"]
    assert isinstance(rows, list) and len(rows) <= 50
    assert all(set(row) <= {"ID", "TITLE"} and "ID" in row for row in rows)
    ids = [int(row["ID"]) for row in rows]
    assert ids == sorted(ids, reverse=True)
    assert body["total"] >= len(rows)
    if target.sandbox:
        assert body["total"] == SANDBOX_LEADS == len(rows)


def test_scope_lists_the_granted_scopes(target: Target) -> None:
    run = target.cli("scope", "--output", "result")
    assert run.code == 0, run.err
    scopes = run.json()
    assert isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)
    assert "crm" in scopes


def test_method_get_reports_availability(target: Target) -> None:
    run = target.cli("method.get", "--params", '{"name": "crm.lead.add"}', "--output", "result")
    assert run.code == 0, run.err
    answer = run.json()
    assert answer["isExisting"] is True and answer["isAvailable"] is True
    missing = target.cli(
        "method.get", "--params", '{"name": "no.such.method"}', "--output", "result"
    )
    assert missing.code == 0, missing.err
    assert missing.json()["isExisting"] is False


# --- writes --------------------------------------------------------------------------------


def _lead(target: Target, lead_id: int) -> Run:
    return target.cli("crm.lead.get", "--params", json.dumps({"id": lead_id}), "--output", "result")


def test_lead_add_update_delete_cycle(target: Target) -> None:
    if not target.writes:
        pytest.skip("set B24_SMOKE_WRITE=1 to run the write cycle on the real portal")
    origin = uuid.uuid4().hex
    title = f"{TAG} {origin[:8]}"
    fields = {"TITLE": title, "ORIGINATOR_ID": TAG, "ORIGIN_ID": origin}
    add = target.cli("crm.lead.add", "--params", json.dumps({"fields": fields}), "--confirm-write")
    assert add.code == 0, add.err
    lead_id = int(add.json()["result"])
    target.created.append(lead_id)

    tagged = {"filter": {"ORIGINATOR_ID": TAG, "ORIGIN_ID": origin}, "select": ["ID"]}
    found = target.cli("crm.lead.list", "--params", json.dumps(tagged), "--output", "result")
    assert found.code == 0, found.err
    assert [int(row["ID"]) for row in found.json()] == [lead_id]

    update = {"id": lead_id, "fields": {"TITLE": f"{title} updated"}}
    changed = target.cli("crm.lead.update", "--params", json.dumps(update), "--confirm-write")
    assert changed.code == 0, changed.err
    assert _lead(target, lead_id).json()["TITLE"] == f"{title} updated"

    delete = ("crm.lead.delete", "--params", json.dumps({"id": lead_id}))
    refused = target.cli(*delete)
    assert refused.code == 3 and refused.error()["code"] == "CONFIRMATION_REQUIRED"
    assert _lead(target, lead_id).code == 0, "the refused delete must not have run"
    deleted = target.cli(*delete, "--confirm-destructive")
    assert deleted.code == 0, deleted.err
    target.created.remove(lead_id)
    gone = _lead(target, lead_id)
    assert gone.code == 1, gone.err


# --- OAuth: the offline queue -------------------------------------------------------------


def test_offline_queue_can_be_read_without_reserving(target: Target) -> None:
    if target.oauth_env is None:
        pytest.skip("offline-queue checks need OAuth settings (B24_AUTH_MODE=oauth)")
    if target.sandbox:
        target.sandbox.admin("seed", {"event.offline": SANDBOX_OFFLINE_EVENTS})
    reads = [target.cli("event.offline.list", "--output", "result", oauth=True) for _ in "ab"]
    for run in reads:
        assert run.code == 0, run.err
        assert isinstance(run.json(), list)
    first, second = (run.json() for run in reads)
    assert all("EVENT_NAME" in row and "MESSAGE_ID" in row for row in first)
    if target.sandbox:
        assert len(first) == SANDBOX_OFFLINE_EVENTS
        assert first == second, "a read must neither reserve nor clear rows"
        assert not any(row.get("PROCESS_ID") for row in second)


def test_offline_queue_refuses_webhook_auth(target: Target) -> None:
    if target.oauth_env is target.env:
        pytest.skip("the live settings are OAuth: no webhook to try")
    run = target.cli("event.offline.list", "--output", "result")
    assert run.code == 4, run.err
    assert run.error()["code"] == "WRONG_AUTH_TYPE"
    assert "B24_AUTH_MODE=oauth" in run.error()["hint"]


# --- make demo -----------------------------------------------------------------------------

WEBHOOK_SHAPE = re.compile(r"/rest/\d+/[A-Za-z0-9]{6,}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_runs_end_to_end_with_every_step_green(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "b24agent.cli.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    steps = [line for line in lines if re.match(r"^\d+\. ", line)]
    outcomes = [line.strip() for line in lines if line.strip()[:1] in ("✓", "✗")]
    assert len(steps) == len(outcomes) >= 8
    # Each step reports its program's exit code; the MCP step reports the session it hosted.
    assert all(line.startswith(("✓ exit ", "✓ mcp · ")) for line in outcomes), done.stdout
    assert f"all {len(steps)} steps behaved as expected" in done.stdout
    assert "Traceback" not in done.stderr
    assert not WEBHOOK_SHAPE.search(done.stdout + done.stderr), "a webhook URL was printed"
    audit = Path(re.search(r"^audit log:\s+(\S+)$", done.stdout, re.M).group(1))
    assert audit.is_file() and audit.is_relative_to(tmp_path)
    assert len(audit.read_text().splitlines()) >= len(steps) - 2


def test_demo_stops_at_the_first_surprise_and_keeps_secrets_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that fails (and blurts its webhook URL on stderr) makes the demo exit 1."""
    from b24agent.cli import demo

    leak = tmp_path / "leaked-url.txt"
    broken = tmp_path / "broken_client.py"
    broken.write_text(
        "import json, os, pathlib, sys\n"
        "url = os.environ['B24_WEBHOOK_URL']\n"
        f"pathlib.Path({str(leak)!r}).write_text(url)\n"
        "sys.stderr.write(json.dumps({'error': {'code': 'BROKEN', 'message': url}}) + '\\n')\n"
        "sys.exit(4)\n"
    )
    monkeypatch.setattr(demo, "CLIENT", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    assert demo.run(out) == 1
    text = out.getvalue()
    code = leak.read_text().rstrip("/").rsplit("/", 1)[-1]
    assert len(code) >= 8 and code not in text
    assert "✗ exit 4 (expected 0): " in text
    assert "demo FAILED at step 1 (" in text
    assert "✓" not in text
    assert "sandbox stopped." in text
