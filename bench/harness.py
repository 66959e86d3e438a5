"""What every benchmark shares: a sandbox portal subprocess and a measured child process.

Figures come from outside the contender: HTTP requests and rate-limit rejections from the
sandbox's own counters (admin ``stats``), wall time from the parent's clock and peak memory from
the kernel's ``ru_maxrss`` of the reaped child, so no client can under-report what it did.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from b24agent.cli.warm import launch
from b24agent.cli.warm import wire as warm_wire

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "skills" / "bitrix24-agent" / "scripts"
BENCH = ROOT / "bench"

# Peers come from PyPI with their bytecode compiled by pip; our editable install compiles on
# first import, and not at all under PYTHONDONTWRITEBYTECODE. Compile ours up front, so that no
# contender pays for compiling.
compileall.compile_dir(SCRIPTS / "b24agent", quiet=1)

#: Leaky bucket per plan (drain per second, capacity), as the sandbox enforces it.
PLANS = {"standard": (2.0, 50), "enterprise": (5.0, 250)}


class Sandbox:
    """A sandbox_portal.py subprocess, its credentials and its admin surface."""

    def __init__(self, plan: str = "unlimited", latency_ms: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "sandbox_portal.py"),
                "--port",
                "0",
                "--plan",
                plan,
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.url: str = self.info["url"]
        self.webhook_url: str = self.info["webhook_url"]

    def admin(self, op: str, payload: dict[str, Any] | None = None) -> Any:
        verb = "POST" if payload is not None else "GET"
        response = requests.request(
            verb,
            f"{self.url}/_sandbox/{op}",
            json=payload,
            headers={"X-Sandbox-Admin": self.info["admin_token"]},
            timeout=600,
        )
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, int]:
        """Requests and rejections so far (both limiters' rejections summed)."""
        stats = self.admin("stats")
        rejected = stats["rate_limit_rejections"] + stats["operating_limit_rejections"]
        return {"requests": stats["requests"], "rejections": rejected}

    def total(self, list_method: str) -> int:
        """How many rows ``list_method`` has, by the portal's own ``total`` (one REST call)."""
        answer = requests.post(self.webhook_url + list_method, json={"select": ["ID"]}, timeout=60)
        return int(answer.json()["total"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def clean_env(**b24: str) -> dict[str, str]:
    """The current environment without any B24_* variable, plus ``b24``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    env.update(b24)
    return env


@dataclass
class Measured:
    """One child run: what it printed and what it cost."""

    code: int
    out_path: Path
    stderr: str
    wall_s: float
    peak_mb: float
    requests: int
    rejections: int

    def json(self) -> Any:
        """The child's stdout as one JSON document (peer runners print a summary)."""
        return json.loads(self.out_path.read_bytes())


def measure(
    sandbox: Sandbox,
    argv: list[str],
    env: dict[str, str],
    workdir: Path,
    stdin: bytes | None = None,
    timeout_s: float = 900,
) -> Measured:
    """Run ``argv`` once with stdout and stderr in files under ``workdir`` (a big export is then
    not held by this process). The child is reaped with ``wait4`` so its own peak RSS is read;
    it is killed after ``timeout_s``."""
    before = sandbox.counters()
    in_path, out_path, err_path = workdir / "stdin", workdir / "stdout", workdir / "stderr"
    in_path.write_bytes(stdin or b"")
    with open(in_path, "rb") as inp, open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=inp, stdout=out, stderr=err, cwd=workdir)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    after = sandbox.counters()
    return Measured(
        code=proc.returncode,
        out_path=out_path,
        stderr=err_path.read_text(errors="replace"),
        wall_s=wall,
        peak_mb=usage.ru_maxrss / 1024,
        requests=after["requests"] - before["requests"],
        rejections=after["rejections"] - before["rejections"],
    )


class WarmServer:
    """b24's warm server for one contender, started and reaped here, like any contender process.

    ``b24`` starts it on its first call and later calls use it; here it is started before the
    measured run, as on a machine where b24 ran before. Reaping it with ``wait4`` reports the
    peak memory of the server and of every worker it reaped, the one that did the job included,
    so the CLI's figure is not just its small caller's.
    """

    #: Short, so it exits soon after the run; any call restarts the wait.
    IDLE_S = "2"
    #: Time for a new spare worker to rehearse a call (~50 ms) before the measured run.
    SETTLE_S = 0.3

    def __init__(self, env: dict[str, str], runtime: Path) -> None:
        runtime.mkdir(exist_ok=True)
        self.env = {**env, "XDG_RUNTIME_DIR": str(runtime), "B24_SERVER_IDLE_SEC": self.IDLE_S}
        address = warm_wire.address(self.env)
        assert address is not None, "no private runtime folder for the warm server"
        self.proc = subprocess.Popen(
            launch.server_command(address),
            env=launch.server_env(self.env),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(address):
            assert time.monotonic() < deadline and self.proc.poll() is None, "no warm server"
            time.sleep(0.02)
        # One call that sends nothing to the portal, as if b24 had been used before; it waits
        # for a spare worker, and the pause lets the next spare finish its own rehearsal.
        subprocess.run(b24_argv("--help"), env=self.env, stdout=subprocess.DEVNULL, check=True)
        time.sleep(self.SETTLE_S)

    def reap(self) -> float:
        """Wait for the server to leave when idle; the peak RSS of it and its workers, MB."""
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        return usage.ru_maxrss / 1024


def run_contender(
    sandbox: Sandbox,
    name: str,
    argv: list[str],
    workdir: Path,
    stdin: bytes | None = None,
    timeout_s: float = 900,
) -> Measured:
    """One contender's measured run, by its name: "(CLI)" runs served by a warm server, "(CLI,
    B24_SERVER=off)" in their own process, the rest (library and peer jobs) as they are."""
    env = b24_env(sandbox, workdir / "state")
    if name.endswith("(CLI)"):
        server = WarmServer(env, workdir / "rt")
        run = measure(sandbox, argv, server.env, workdir, stdin=stdin, timeout_s=timeout_s)
        return replace(run, peak_mb=max(run.peak_mb, server.reap()))  # the server's counts too
    if "B24_SERVER=off" in name:
        env["B24_SERVER"] = "off"
    return measure(sandbox, argv, env, workdir, stdin=stdin, timeout_s=timeout_s)


def b24_env(sandbox: Sandbox, state_dir: Path) -> dict[str, str]:
    """What a user of our CLI sets: the webhook and a state folder (limiter, audit) of its own."""
    env = clean_env(B24_WEBHOOK_URL=sandbox.webhook_url, B24_STATE_DIR=str(state_dir))
    env["BENCH_WEBHOOK_URL"] = sandbox.webhook_url  # for the peers, in contenders.py
    return env


def contender_argv(*args: str) -> list[str]:
    return [sys.executable, str(BENCH / "contenders.py"), *args]


def b24_argv(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS / "bitrix24_client.py"), *args]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cost(run: Measured, complete: bool) -> dict[str, Any]:
    """The figures every peer comparison shows for one contender's run."""
    return {
        "complete": complete,
        "requests": run.requests,
        "wall_s": round(run.wall_s, 2),
        "rejections": run.rejections,
        "peak_mb": round(run.peak_mb, 1),
        "error": "" if complete else " ".join(run.stderr.strip().splitlines()[-1:]),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one contender as one figure: the median wall time (the machine's noise
    is as large as the gaps between contenders), the worst of everything else, every wall time
    kept in ``walls``; complete only if every run was."""
    failed = [r for r in runs if not r["complete"]]
    return {
        **runs[0],
        "complete": not failed,
        "requests": max(r["requests"] for r in runs),
        "rejections": max(r["rejections"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
        "walls": [r["wall_s"] for r in runs],
        "error": failed[0]["error"] if failed else "",
    }


def comparison(
    figures: list[dict[str, Any]], ours: tuple[str, ...], done: tuple[str, str]
) -> tuple[str, float | None]:
    """A table of ``cost`` figures with each wall time over the best complete peer's, and that
    best time. ``done`` is (column header, figure key) for what the contender delivered."""
    peers = [f["wall_s"] for f in figures if f["contender"] not in ours and f["complete"]]
    best = min(peers) if peers else None
    header, key = done
    rows = [
        [
            f["contender"],
            f[key] if f["complete"] else f"{f[key]} (FAILED: {f['error']})",
            f["requests"],
            f["wall_s"],
            f["rejections"],
            f["peak_mb"],
            f"{f['wall_s'] / best:.2f}" if best else "n/a",
        ]
        for f in figures
    ]
    headers = ["contender", header, "requests", "wall s", "rejections", "peak MB", "/ best peer"]
    return table(headers, rows), best
