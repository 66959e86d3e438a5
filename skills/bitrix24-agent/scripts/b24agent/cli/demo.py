"""``make demo``: a guided tour of the three programs against a local sandbox portal.

Why it exists: a new user (or a reviewer) should see the guard rails work before giving the tool
a real portal's credentials. Everything runs the real scripts as subprocesses, exactly as an agent
or cron would, against ``sandbox_portal.py`` on 127.0.0.1, with ``B24_STATE_DIR`` in a fresh temp
folder that is kept afterwards so the audit log, plans and worker files can be inspected.

Each step prints the command it runs and one outcome line (``✓``/``✗``, exit code, the key
figure). The demo exits 0 only when every step behaved as expected; the first surprise stops it
with exit 1 naming the step. Secrets never reach the screen: credentials travel only in the child
processes' environment, and everything echoed from a child passes through ``Redactor``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from ..redact import Redactor
from ..settings import portal_key_of
from .sandbox_env import oauth_env

SCRIPTS = Path(__file__).resolve().parents[2]
CLIENT = SCRIPTS / "bitrix24_client.py"
WORKER = SCRIPTS / "offline_sync_worker.py"
SANDBOX = SCRIPTS / "sandbox_portal.py"
MCP_SERVER = SCRIPTS / "mcp_server.py"

#: Leads seeded for the export step: enough for several 2,500-row batch pages.
EXPORT_LEADS = 5000
#: Offline events seeded for the worker step.
OFFLINE_EVENTS = 40
#: Leads the batch-file step adds.
BATCH_ADDS = 3
#: Seconds any one child process may take before the step counts as failed.
CHILD_TIMEOUT_S = 90
START_TIMEOUT_S = 30
PROGRESS_EVERY = 500


class StepFailed(Exception):
    """An outcome the demo did not expect; the message (already masked) says what happened."""


#: Errors from reading a child's output or the sandbox that also mean "not what we expected".
UNEXPECTED = (ValueError, KeyError, TypeError, IndexError, OSError, requests.RequestException)


@dataclass(frozen=True)
class Run:
    """A finished child process."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def error_code(self) -> str:
        """The ``code`` of the CLI's one-line JSON error on stderr ('' when there is none)."""
        for line in reversed(self.err.splitlines()):
            try:
                return str(json.loads(line)["error"]["code"])
            except (ValueError, KeyError, TypeError):
                continue
        return ""


class SandboxPortal:
    """The sandbox subprocess: started with demo data, read through its admin surface."""

    def __init__(self, folder: Path) -> None:
        self._log = folder / "sandbox.log"
        self._process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        """Start ``sandbox_portal.py --port 0 --seed-demo`` and return its start-up line."""
        with self._log.open("w") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(SANDBOX), "--port", "0", "--seed-demo"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        box: list[str] = []
        stdout = self._process.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        if not box or not box[0].strip():
            self.stop()
            raise StepFailed(f"the sandbox did not start; see {self._log}")
        try:
            self.info = json.loads(box[0])
        except ValueError:
            self.stop()
            raise StepFailed(f"the sandbox's start-up line is not JSON; see {self._log}") from None
        return self.info

    def admin(self, op: str, payload: dict[str, Any] | None = None) -> Any:
        """One ``/_sandbox/<op>`` call: GET without a payload, POST with one."""
        response = requests.request(
            "POST" if payload is not None else "GET",
            f"{self.info['url']}/_sandbox/{op}",
            json=payload,
            headers={"X-Sandbox-Admin": self.info["admin_token"]},
            timeout=30,
        )
        if response.status_code != 200:
            raise StepFailed(f"sandbox admin {op} answered HTTP {response.status_code}")
        return response.json()

    def requests_so_far(self) -> int:
        return int(self.admin("stats")["requests"])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdout is not None:
            process.stdout.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _child_env(extra: dict[str, str], state_dir: Path) -> dict[str, str]:
    """The parent's environment without any real B24_* settings, plus the sandbox's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    env.update(extra, B24_STATE_DIR=str(state_dir))
    return env


class Demo:
    """The steps, in order; each returns its key figure or raises StepFailed."""

    def __init__(self, sandbox: SandboxPortal, folder: Path, out: TextIO) -> None:
        info = sandbox.info
        oauth = info["oauth"]
        self.sandbox, self.out = sandbox, out
        self.state_dir = folder / "state"
        self.work = folder / "work"  # the children's cwd: never a project's real ./.env
        self.work.mkdir(parents=True, exist_ok=True)
        secret_keys = ("client_secret", "access_token", "refresh_token", "application_token")
        self.redactor = Redactor(
            [info["webhook"]["code"], info["admin_token"], *(oauth[k] for k in secret_keys)]
        )
        self.webhook_env = _child_env({"B24_WEBHOOK_URL": info["webhook_url"]}, self.state_dir)
        self.oauth_env = _child_env(
            {**oauth_env(info["url"], oauth), "B24_APPLICATION_TOKEN": oauth["application_token"]},
            self.state_dir,
        )
        self.audit_file = self.state_dir / portal_key_of(info["url"]) / "audit.jsonl"
        self.plan_id = ""

    # --- running children --------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(self.redactor.mask(text), file=self.out, flush=True)

    def _show(self, script: Path, args: tuple[str, ...], redirect: str = "") -> None:
        self.say(f"   $ {script.name} {shlex.join(args)}{redirect}")

    def cli(self, *args: str, script: Path | None = None, oauth: bool = False) -> Run:
        """Run a script (the client by default) with the sandbox credentials in its environment,
        never on screen."""
        script = script or CLIENT
        self._show(script, args)
        try:
            done = subprocess.run(
                [sys.executable, str(script), *args],
                env=self.oauth_env if oauth else self.webhook_env,
                cwd=self.work,
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{script.name} did not finish in {CHILD_TIMEOUT_S} s") from None
        return Run(done.returncode, done.stdout, done.stderr)

    def expect(self, run: Run, code: int, error: str = "") -> None:
        """Fail the step unless ``run`` exited with ``code`` (and that error code)."""
        if run.code == code and run.error_code() == error:
            return
        detail = run.err.strip().splitlines()[-1] if run.err.strip() else "no error line"
        wanted = f"{code} {error}".strip()
        raise StepFailed(f"exit {run.code} (expected {wanted}): {self.redactor.mask(detail)}")

    def sent(self, method: str) -> int:
        """How many direct ``method`` requests the portal has answered so far."""
        return int(self.sandbox.admin("stats")["by_method"].get(method, 0))

    # --- the steps ---------------------------------------------------------------------------

    def read_user(self) -> str:
        run = self.cli("user.current", "--output", "result")
        self.expect(run, 0)
        user = run.json()
        return f"exit 0 · user {user['ID']} {user.get('NAME', '')} ({user.get('EMAIL', '')})"

    def read_scope(self) -> str:
        run = self.cli("scope", "--packs", "core,diagnostics", "--output", "result")
        self.expect(run, 0)
        scopes = run.json()
        if "crm" not in scopes:
            raise StepFailed(f"the webhook lacks the crm scope: {scopes}")
        return f"exit 0 · {len(scopes)} scopes granted, crm among them"

    def plan_write(self) -> str:
        params = {"id": 1, "fields": {"TITLE": "Reviewed by the demo"}}
        run = self.cli("crm.lead.update", "--params", json.dumps(params), "--plan-only")
        self.expect(run, 0)
        document = run.json()
        self.plan_id = str(document["plan"]["id"])
        if self.plan_id not in document.get("execute", ""):
            raise StepFailed("the plan does not say how to execute it")
        if self.sent("crm.lead.update"):
            raise StepFailed("planning sent crm.lead.update to the portal")
        return f"exit 0 · plan {self.plan_id} stored for review; no update sent yet"

    def execute_plan(self) -> str:
        run = self.cli("--execute-plan", self.plan_id)
        self.expect(run, 0)
        check = self.cli("crm.lead.get", "--params", '{"id": 1}', "--output", "result")
        self.expect(check, 0)
        title = check.json().get("TITLE")
        if title != "Reviewed by the demo":
            raise StepFailed(f"lead 1 has TITLE {title!r} after the plan ran")
        return f"exit 0 · lead 1 now titled {title!r}"

    def replay_plan(self) -> str:
        run = self.cli("--execute-plan", self.plan_id)
        self.expect(run, 5, "PLAN_SPENT")
        return "exit 5 · PLAN_SPENT: a plan runs at most once"

    def refuse_delete(self) -> str:
        run = self.cli("crm.lead.delete", "--params", '{"id": 2}')
        self.expect(run, 3, "CONFIRMATION_REQUIRED")
        if self.sent("crm.lead.delete"):
            raise StepFailed("the portal received crm.lead.delete")
        return "exit 3 · CONFIRMATION_REQUIRED; the portal received no delete"

    def batch_file(self) -> str:
        calls = self.work / "calls.jsonl"
        lines = [
            {"method": "crm.lead.add", "params": {"fields": {"TITLE": f"Batch lead {n}"}}}
            for n in range(1, BATCH_ADDS + 1)
        ]
        calls.write_text("".join(json.dumps(line) + "\n" for line in lines))
        before = self.sandbox.requests_so_far()
        run = self.cli("--batch-file", calls.name, "--confirm-write")
        self.expect(run, 0)
        ids = [json.loads(line).get("result") for line in run.out.splitlines()]
        if len(ids) != BATCH_ADDS or not all(isinstance(i, int) for i in ids):
            raise StepFailed(f"expected {BATCH_ADDS} new lead ids, got {ids}")
        sent = self.sandbox.requests_so_far() - before
        return f"exit 0 · {len(ids)} leads added (ids {ids}) in {sent} HTTP request(s)"

    def export(self) -> str:
        self.sandbox.admin("seed", {"crm.lead": EXPORT_LEADS})
        self.say(f"   · sandbox admin: seeded {EXPORT_LEADS} more leads")
        before = self.sandbox.requests_so_far()
        args = ("crm.lead.list", "--all", "--output", "jsonl")
        target = self.work / "leads.jsonl"
        self._show(CLIENT, args, f" > {target.name}")
        rows, ids, code, err = self._stream(args, target)
        self.expect(Run(code, "", err), 0)
        sent = self.sandbox.requests_so_far() - before
        if rows < EXPORT_LEADS or len(ids) != rows:
            raise StepFailed(f"{rows} rows exported, {len(ids)} distinct ids")
        return f"exit 0 · {rows} rows in {sent} HTTP requests ({rows // max(sent, 1)} rows each)"

    def _stream(self, args: tuple[str, ...], target: Path) -> tuple[int, set[str], int, str]:
        """Run an export, saving its JSONL and counting rows as they arrive (live on a tty)."""
        err_file = self.work / "export.err"
        rows, ids = 0, set()
        with target.open("w") as sink, err_file.open("w") as err:
            process = subprocess.Popen(
                [sys.executable, str(CLIENT), *args],
                env=self.webhook_env,
                cwd=self.work,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            watchdog = threading.Timer(CHILD_TIMEOUT_S, process.kill)
            watchdog.start()
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    sink.write(line)
                    rows += 1
                    ids.add(str(json.loads(line).get("ID")))
                    if rows % PROGRESS_EVERY == 0 and self.out.isatty():
                        self.out.write(f"\r     … {rows} rows")
                        self.out.flush()
                code = process.wait()
            finally:
                watchdog.cancel()
        if self.out.isatty():
            self.out.write("\r" + " " * 24 + "\r")
        return rows, ids, code, err_file.read_text()

    def drain(self) -> str:
        self.sandbox.admin("seed", {"event.offline": OFFLINE_EVENTS})
        self.say(f"   · sandbox admin: queued {OFFLINE_EVENTS} offline events")
        inbox = self.work / "inbox.jsonl"
        run = self.cli("--drain", "--sink", inbox.name, script=WORKER, oauth=True)
        self.expect(run, 0)
        summary = json.loads(run.out.strip().splitlines()[-1])
        delivered = len(inbox.read_text().splitlines()) if inbox.exists() else 0
        handled, cleared = summary.get("handled"), summary.get("cleared")
        if handled != delivered or cleared != handled or handled < OFFLINE_EVENTS:
            raise StepFailed(f"handled {handled}, cleared {cleared}, inbox {delivered} lines")
        if summary.get("dead_lettered") or not summary.get("queue_empty"):
            raise StepFailed(f"queue not drained cleanly: {summary}")
        return (
            f"exit 0 · {handled} events handled, {cleared} cleared, 0 dead-lettered, "
            f"{summary.get('requests')} requests; {inbox.name} has {delivered} lines"
        )

    def mcp_host(self) -> str:
        """The MCP SDK's client as the host: read, plan a write, a human approves, it runs."""
        import anyio
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.types import ElicitResult

        asked: list[str] = []

        async def human(_context: Any, params: Any) -> ElicitResult:
            asked.append(params.message)
            return ElicitResult(action="accept", content={"approve": True})

        server = StdioServerParameters(
            command=sys.executable,
            args=[str(MCP_SERVER)],
            env={**self.webhook_env, "B24_APPROVAL": "writes"},
            cwd=str(self.work),
        )
        lead = {"method": "crm.lead.add", "params": {"fields": {"TITLE": "Added over MCP"}}}

        async def host() -> tuple[int, Any, Any, Any]:
            with (self.work / "mcp-server.log").open("w") as log:
                transport = stdio_client(server, errlog=log)
                async with Client(transport, elicitation_callback=human) as client:  # type: ignore[arg-type]
                    tools = len((await client.list_tools()).tools)
                    me = await client.call_tool("b24_call", {"method": "user.current"})
                    plan = await client.call_tool("b24_plan", lead)
                    plan_id = json.loads(plan.content[0].text).get("plan_id")  # type: ignore[union-attr]
                    ran = await client.call_tool("b24_execute_plan", {"plan_id": plan_id})
                    return tools, me, plan, ran

        self.say(
            f"   $ {MCP_SERVER.name}   (driven by the MCP SDK's client, as Claude Desktop would)"
        )
        self.say("     tools/call b24_call user.current · b24_plan crm.lead.add · b24_execute_plan")
        tools, *results = anyio.run(host)
        answers = [json.loads(r.content[0].text) for r in results]
        failed = [a for r, a in zip(results, answers, strict=True) if r.is_error]
        if failed:
            raise StepFailed(f"a tool call failed: {self.redactor.mask(json.dumps(failed[0]))}")
        if len(asked) != 1 or "Added over MCP" not in asked[0]:
            raise StepFailed("the human was not shown the plan before it ran")
        self.say(f"   · the human was asked: {asked[0].splitlines()[0]} -> yes")
        me, plan, ran = answers
        return (
            f"mcp · {tools} tools · read user {me['result']['ID']} · plan {plan['plan_id']} "
            f"approved in the prompt · lead {ran['result']} added"
        )

    def verify_audit(self) -> str:
        run = self.cli("--verify-audit")
        self.expect(run, 0)
        report = run.json()
        if report.get("ok") is not True:
            raise StepFailed(f"the audit report is not ok: {report}")
        return f"exit 0 · hash chain intact over {report.get('lines')} records"

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("read probe: who am I", self.read_user),
            ("read probe: granted scopes (diagnostics pack)", self.read_scope),
            ("plan a write without sending it", self.plan_write),
            ("execute the reviewed plan", self.execute_plan),
            ("replay the spent plan", self.replay_plan),
            ("destructive call without --confirm-destructive", self.refuse_delete),
            (f"batch file of {BATCH_ADDS} adds", self.batch_file),
            ("full export with progress", self.export),
            ("offline worker: drain the event queue (OAuth)", self.drain),
            ("MCP server: an MCP host reads, plans, a human approves, it runs", self.mcp_host),
            ("audit log: verify the hash chain", self.verify_audit),
        ]


def _run_steps(sandbox: SandboxPortal, folder: Path, out: TextIO) -> tuple[str, int, Path]:
    """Start the sandbox and walk the steps; returns (what failed or '', steps, audit log)."""
    info = sandbox.start()
    demo = Demo(sandbox, folder, out)
    steps = demo.steps()
    demo.say(f"bitrix24-agent demo · sandbox portal {info['url']} (standard plan, demo data)")
    for number, (title, step) in enumerate(steps, 1):
        demo.say(f"{number}. {title}")
        try:
            demo.say(f"   ✓ {step()}")
        except (StepFailed, *UNEXPECTED) as exc:
            shape = "" if isinstance(exc, StepFailed) else f"unexpected {type(exc).__name__}: "
            demo.say(f"   ✗ {shape}{exc}")
            return f"step {number} ({title})", len(steps), demo.audit_file
    return "", len(steps), demo.audit_file


def run(out: TextIO = sys.stdout) -> int:
    """Run every step; 0 when all behaved as expected, 1 at the first surprise, 130 on Ctrl-C."""
    folder = Path(tempfile.mkdtemp(prefix="b24-demo-"))
    sandbox = SandboxPortal(folder)
    audit_file: Path | None = None
    try:
        failed, count, audit_file = _run_steps(sandbox, folder, out)
    except StepFailed as exc:
        failed, count = f"start-up: {exc}", 0
    except KeyboardInterrupt:
        print("interrupted", file=out)
        return 130
    finally:
        sandbox.stop()
    print("sandbox stopped.", file=out)
    if audit_file is not None:
        print(f"audit log:    {audit_file}", file=out)
        print(f"check it:     {CLIENT.name} --verify-audit {audit_file}", file=out)
    print(f"state folder: {folder / 'state'} (kept; delete it when done)", file=out)
    if failed:
        print(f"demo FAILED at {failed}", file=out)
        return 1
    print(f"all {count} steps behaved as expected", file=out)
    return 0


def main() -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓/✗ on a terminal that cannot show them
    return run()


if __name__ == "__main__":
    sys.exit(main())
