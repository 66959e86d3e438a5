"""b24-mcp in front of the broker (``B24_BROKER=unix:PATH``): the MCP side holds no secret.

Each tool becomes the ``b24`` command a shell agent would type, run with only ``B24_BROKER``
(and ``B24_BROKER_USER``, ``B24_BROKER_CLAIM``, PATH, HOME) in its environment; ``b24`` hands it
to the broker, which runs it through the pipeline under the operator's settings, credentials,
limiter and keyed audit, and waits for a person's ``b24-broker approve`` before a plan above
``B24_APPROVAL`` runs. So in this mode: the human approves through the broker's admin socket,
not MCP elicitation (the MCP client is the agent's side, which must not hold an approval
channel); the broker's audit names the caller's uid (the kernel's word) and, as
``origin.claimed``, the MCP client and tool (this side's word); ``b24_export`` reports no
request count (the broker streams rows, not figures). Everything else is the standalone
server's: schemas, size cap, errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from mcp.server.mcpserver import Context, Elicit
from mcp.server.mcpserver.resolve import ElicitationResult
from mcp.types import CallToolResult

from ..errors import error_from_line
from ..guard.pipeline import Call, Mode
from ..settings import Settings
from .approval import Approve, Seen
from .shaping import error_result, fit_rows, ok_result
from .tools import NOT_NEEDED, Api, ToolBox, plan_answer, reads_only

__all__ = ["BrokeredToolBox"]

CLIENT = Path(__file__).resolve().parents[2] / "bitrix24_client.py"


class BrokeredToolBox(ToolBox):
    """The tools, each run as ``b24 ...`` through the broker."""

    def __init__(self, settings: Settings, transport: str, broker: str) -> None:
        super().__init__(settings, transport)
        self.env = {
            "B24_BROKER": broker,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
        }
        if os.environ.get("B24_BROKER_USER"):  # b24 checks who serves the socket against it
            self.env["B24_BROKER_USER"] = os.environ["B24_BROKER_USER"]

    def _env(self, tool: str, ctx: Context) -> dict[str, str]:
        """``b24``'s environment for one tool call: the broker, and this client's claim about
        itself (MCP client and tool), which the broker's audit records as said, not as proven."""
        return {**self.env, "B24_BROKER_CLAIM": json.dumps(self.origin(tool, ctx))}

    def _b24(self, args: list[str], stdin: str, env: dict[str, str]) -> str:
        """Run ``b24 ARGS`` through the broker; its stdout, or its error raised."""
        done = subprocess.run(
            [sys.executable, str(CLIENT), *args, "--compact"],
            input=stdin,
            capture_output=True,
            env=env,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise error_from_line(done.returncode, done.stderr)
        return done.stdout or ""

    def _brokered(self, work: Any, *, writes: bool = False) -> CallToolResult:
        """``work``'s document or error; a local failure is "a write may have run" only for
        the tool that ``writes`` (b24_execute_plan): the others cannot write."""
        try:
            return ok_result(work(), self._mask, self._spill(self._mask))
        except Exception as exc:
            from ..cli.common import as_b24_error

            return error_result(as_b24_error(exc, dispatched=writes), self._mask)

    # --- the tools ---------------------------------------------------------------------------
    def call(self, ctx: Context, method: str, params: dict[str, Any], api: Api) -> CallToolResult:
        def work() -> Any:
            reads_only(method, params)
            flags = ["--rest-v3"] if api == "v3" else []
            args = [method, "--params", "-", *flags]
            body = json.loads(self._b24(args, json.dumps(params), self._env("b24_call", ctx)))
            return fit_rows(body, int(params.get("start") or 0), self._spill(self._mask))

        return self._brokered(work)

    def _plan(
        self, ctx: Context, tool: str, mode: Mode, calls: tuple[Call, ...], api: str
    ) -> CallToolResult:
        def work() -> Any:
            if mode == "batch_file":
                lines = "".join(
                    json.dumps({"method": c.method, "params": dict(c.params)}) + "\n" for c in calls
                )
                out = self._b24(["--batch-file", "-", "--plan-only"], lines, self._env(tool, ctx))
            else:
                (call,) = calls
                flags = ["--rest-v3"] if api == "v3" else []
                args = [call.method, "--params", "-", "--plan-only", *flags]
                out = self._b24(args, json.dumps(dict(call.params)), self._env(tool, ctx))
            summary = json.loads(out)["plan"]
            approval = (
                "a person approves it through the broker (b24-broker approve) when "
                "B24_APPROVAL of the broker requires; b24_execute_plan waits for that"
            )
            whole = f"the broker's approvers read it whole with b24-broker show {summary['id']}"
            return plan_answer(summary, approval, whole)

        return self._brokered(work)

    def seen(self, plan_id: str) -> Seen:
        return Seen()  # the plan lives in the broker's state, out of this side's reach

    def ask(self, seen: Seen, ctx: Context) -> Elicit[Approve] | str:
        return NOT_NEEDED  # the broker asks its approvers; this side must not approve

    def execute(
        self, ctx: Context, plan_id: str, seen: Seen, answer: ElicitationResult[Approve]
    ) -> CallToolResult:
        def work() -> Any:
            args = ["--execute-plan", plan_id, "--confirm-destructive"]
            out = self._b24(args, "", self._env("b24_execute_plan", ctx))
            lines = [json.loads(line) for line in out.splitlines() if line.strip()]
            body = lines[0] if len(lines) == 1 and "line" not in lines[0] else {"result": lines}
            return {"plan_id": plan_id, "ran": True, **fit_rows(body, 0, self._spill(self._mask))}

        return self._brokered(work, writes=True)

    def export(self, ctx: Context, method: str, params: dict[str, Any]) -> CallToolResult:
        def work() -> Any:
            reads_only(method, params)
            args = [method, "--params", "-", "--all", "--output", "jsonl", "--compact"]

            def write(handle: IO[str], _rows: Iterable[Any]) -> int:
                process = subprocess.Popen(
                    [sys.executable, str(CLIENT), *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=self._env("b24_export", ctx),
                    text=True,
                )
                assert process.stdin and process.stdout and process.stderr
                process.stdin.write(json.dumps(params))
                process.stdin.close()
                # stderr is read while stdout is: a child blocked writing a full stderr pipe
                # would never close stdout, and both sides would wait for ever.
                stderr = process.stderr
                err: list[str] = []
                drain = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
                drain.start()
                rows = 0
                for line in process.stdout:
                    handle.write(self._mask(line))
                    rows += 1
                drain.join()
                if process.wait() != 0:
                    raise error_from_line(process.returncode, "".join(err))
                return rows

            path, rows = self.folder.write_lines(method, (), write)
            return {"path": str(path), "rows": rows, "requests": None, "method": method}

        return self._brokered(work)
