"""What every benchmark shares: a sandbox portal subprocess, measured runs, fair comparisons.

Figures come from outside the contender: HTTP requests, whole requests refused by a limiter
(503/429) and batch commands refused by the operating-time limit, from the sandbox's counters
(admin ``stats``); wall time from the parent's clock; the sandbox's CPU from /proc; peak memory
from every process that did the work: the contender (``ru_maxrss`` of the reaped child) and,
for our CLI, its warm server and the worker that served the call (``VmHWM``, sampled while
they run, and the server's own rusage). Admin calls never touch the portal's bucket, so
checking a result cannot cost a contender.

Contenders run interleaved (A B C, A B C, ...), N runs each, so all of them see the same swings
of machine load; a table shows each one's median and range. A contender that fails any run, or
returns fewer rows than exist, is marked FAILED in its row, with the failing runs' reasons.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from b24agent.backends.bucket import BucketModel
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
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; with ``reaped_children``,
    also those of the children it has waited for (a warm server's finished workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = fields[11:15] if reaped_children else fields[11:13]
    return sum(int(ticks) for ticks in used) / _TICK


def bucket_bound_s(requests_needed: int, plan: str = "standard") -> float:
    """The least wall time ``requests_needed`` requests can take on a fresh bucket: the first
    ``capacity`` at once, the rest at the drain rate."""
    rate, capacity = PLANS[plan]
    return max(0.0, (requests_needed - capacity) / rate)


def limiter_floor_s(requests_needed: int, plan: str = "standard") -> float:
    """The least wall time our limiter lets ``requests_needed`` requests take on a fresh bucket:
    the bound plus what its safety margin (a few requests of capacity) costs."""
    model = BucketModel.for_plan(*PLANS[plan])
    return max(0.0, (requests_needed - 1) * model.interval - model.tolerance)


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
        self.session = requests.Session()

    def admin(self, op: str, payload: dict[str, Any] | None = None) -> Any:
        """An admin call: no bucket, no faults, not counted in ``stats``."""
        verb = "POST" if payload is not None else "GET"
        response = self.session.request(
            verb,
            f"{self.url}/_sandbox/{op}",
            json=payload,
            headers={"X-Sandbox-Admin": self.info["admin_token"]},
            timeout=1200,
        )
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, float]:
        """REST requests, requests refused whole by a limiter, refused batch commands (all so
        far) and the sandbox process's CPU seconds."""
        stats = self.admin("stats")
        return {
            "requests": stats["requests"],
            "http_rejections": stats["http_rejections"],
            "command_refusals": stats["command_refusals"],
            "cpu_s": self.cpu_s(),
        }

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the sandbox process has used so far."""
        return cpu_s(self.proc.pid)

    def count(self, kind: str) -> int:
        """Rows of a seed kind (``crm.lead``), by an admin call that never touches the bucket."""
        return int(self.admin("count", {"kind": kind})["count"])

    def stop(self) -> None:
        self.session.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def clean_env(**b24: str) -> dict[str, str]:
    """The current environment without any B24_* variable, plus ``b24``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    env.update(b24)
    return env


# --- memory of every process that did the work -----------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                kids += [int(p) for p in listing.read().split()]
    except OSError:
        pass
    return kids


def _cpu_or_zero(pid: int) -> float:
    """``cpu_s(pid)``, or 0 for a process that is gone."""
    try:
        return cpu_s(pid)
    except OSError:
        return 0.0


def _peak_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakWatch:
    """Samples the peak RSS of the given processes and all their descendants every 20 ms, so
    a forked worker that is never reaped by us still counts."""

    INTERVAL_S = 0.02

    def __init__(self, *roots: int) -> None:
        self.roots = list(roots)
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        seen, todo = set(), list(self.roots)
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            peak = _peak_mb(pid)
            if peak:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), peak)
            todo += _children(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the largest peak seen, MB."""
        self._stop.set()
        self._thread.join()
        return max(self.peaks.values(), default=0.0)


# --- one measured run -------------------------------------------------------------------------


@dataclass
class Measured:
    """One child run: what it printed and what it cost."""

    code: int
    out_path: Path
    stderr: str
    wall_s: float
    peak_mb: float
    requests: int
    http_rejections: int
    command_refusals: int
    sandbox_cpu_s: float

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
    watch: tuple[int, ...] = (),
) -> Measured:
    """Run ``argv`` once with stdout and stderr in files under ``workdir`` (a big export is then
    not held by this process). The child is reaped with ``wait4`` for its own peak RSS; the
    ``watch`` processes (a warm server) and every descendant are sampled for theirs. The child
    is killed after ``timeout_s``."""
    before = sandbox.counters()
    in_path, out_path, err_path = workdir / "stdin", workdir / "stdout", workdir / "stderr"
    in_path.write_bytes(stdin or b"")
    with open(in_path, "rb") as inp, open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=inp, stdout=out, stderr=err, cwd=workdir)
        peaks = PeakWatch(proc.pid, *watch)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
        sampled = peaks.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    after = sandbox.counters()
    return Measured(
        code=proc.returncode,
        out_path=out_path,
        stderr=err_path.read_text(errors="replace"),
        wall_s=wall,
        peak_mb=max(usage.ru_maxrss / 1024, sampled),
        requests=int(after["requests"] - before["requests"]),
        http_rejections=int(after["http_rejections"] - before["http_rejections"]),
        command_refusals=int(after["command_refusals"] - before["command_refusals"]),
        sandbox_cpu_s=after["cpu_s"] - before["cpu_s"],
    )


class WarmServer:
    """b24's warm server for one contender, started and reaped here, like any contender process.

    ``b24`` starts it on its first call and later calls use it. For a "warm" run it is started
    before the measured run, as on a machine where b24 ran before; for a "cold" run the
    measured call finds none and starts it itself, inside the timer. Either way it is reaped
    here, and its peak memory, its workers' (sampled while they run) and that of the workers it
    reaped count in the run's peak.
    """

    #: Short, so it exits soon after the run; any call restarts the wait.
    IDLE_S = "2"
    #: The server and its spare workers are ready once they used no CPU for this long: each
    #: new spare rehearses a call first (~50 ms on a quiet machine, over half a second at load
    #: 6 on two cores, where a fixed 0.3 s pause left the measured call waiting for a spare:
    #: 0.5-0.7 s instead of 0.1 s for the first call).
    SETTLE_S = 0.2
    #: Longest wait for that.
    SETTLE_MAX_S = 10.0

    def __init__(self, env: dict[str, str], runtime: Path) -> None:
        runtime.mkdir(exist_ok=True)
        self.env = {**env, "XDG_RUNTIME_DIR": str(runtime), "B24_SERVER_IDLE_SEC": self.IDLE_S}
        address = warm_wire.address(self.env)
        assert address is not None, "no private runtime folder for the warm server"
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WarmServer:
        """Start the server now (a warm run) and wait until a spare worker is ready."""
        self.proc = subprocess.Popen(
            launch.server_command(self.address),
            env=launch.server_env(self.env),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(self.address):
            assert time.monotonic() < deadline and self.proc.poll() is None, "no warm server"
            time.sleep(0.02)
        # One call that sends nothing to the portal, as if b24 had been used before; it waits
        # for a spare worker, and the spares then finish their own rehearsals.
        subprocess.run(b24_argv("--help"), env=self.env, stdout=subprocess.DEVNULL, check=True)
        self._wait_settled()
        # A server that bound its socket and then died (a package missing at its start-up)
        # leaves every call to run cold: measuring those as "warm" would be a lie.
        assert self.proc.poll() is None, "the warm server exited at start-up"
        return self

    def _wait_settled(self) -> None:
        """Until the server and every worker it forked have been idle for SETTLE_S."""
        assert self.proc is not None
        deadline = time.monotonic() + self.SETTLE_MAX_S
        used, quiet_since = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now = sum(_cpu_or_zero(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])
            if now != used:
                used, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= self.SETTLE_S:
                return
            time.sleep(0.02)

    def pids(self) -> tuple[int, ...]:
        return (self.proc.pid,) if self.proc is not None else ()

    def reap(self) -> float:
        """Wait for our server to leave when idle; the peak RSS of it and the workers it
        reaped, MB. A server the measured call started itself is not our child: it is
        stopped through its socket folder's idle timeout, and its memory was sampled."""
        if self.proc is None:
            _wait_gone(self.address)
            return 0.0
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        return usage.ru_maxrss / 1024


def _wait_gone(address: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(address) and time.monotonic() < deadline:
        time.sleep(0.05)


#: How our CLI rows are named: "(CLI, warm)" runs find the warm server up, "(CLI, cold)" runs
#: start it themselves, inside the timer.
WARM, COLD = "(CLI, warm)", "(CLI, cold)"


def run_contender(
    sandbox: Sandbox,
    name: str,
    argv: list[str],
    workdir: Path,
    stdin: bytes | None = None,
    timeout_s: float = 900,
) -> Measured:
    """One contender's measured run, by its name (see WARM and COLD); library and peer jobs
    run as they are."""
    env = b24_env(sandbox, workdir / "state")
    if not name.endswith((WARM, COLD)):
        return measure(sandbox, argv, env, workdir, stdin=stdin, timeout_s=timeout_s)
    server = WarmServer(env, workdir / "rt")
    if name.endswith(WARM):
        server.start()
    run = measure(
        sandbox, argv, server.env, workdir, stdin=stdin, timeout_s=timeout_s, watch=server.pids()
    )
    run.peak_mb = max(run.peak_mb, server.reap())
    return run


def b24_env(sandbox: Sandbox, state_dir: Path) -> dict[str, str]:
    """What a user of our CLI sets: the webhook and a state folder (limiter, audit) of its own."""
    env = clean_env(B24_WEBHOOK_URL=sandbox.webhook_url, B24_STATE_DIR=str(state_dir))
    env["BENCH_WEBHOOK_URL"] = sandbox.webhook_url  # for the peers, in contenders.py
    return env


def contender_argv(*args: str) -> list[str]:
    return [sys.executable, str(BENCH / "contenders.py"), *args]


def b24_argv(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS / "bitrix24_client.py"), *args]


# --- interleaving, medians and tables ----------------------------------------------------------


def interleaved(names: list[str], runs: int) -> Iterator[tuple[int, str]]:
    """(run number, contender) in the order A B C, A B C, ...: every contender meets the same
    machine load, instead of one of them getting a quiet minute."""
    for number in range(runs):
        for name in names:
            yield number, name


def cost(run: Measured, complete: bool, error: str = "") -> dict[str, Any]:
    """The figures every peer comparison shows for one contender's run."""
    return {
        "complete": complete,
        "requests": run.requests,
        "wall_s": round(run.wall_s, 3),
        "http_rejections": run.http_rejections,
        "command_refusals": run.command_refusals,
        "peak_mb": round(run.peak_mb, 1),
        "sandbox_cpu_s": round(run.sandbox_cpu_s, 2),
        "error": "" if complete else error or _last_line(run.stderr) or f"exit {run.code}",
    }


def _last_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[-1:])[:160]


def guarded(run: Callable[..., dict[str, Any]], name: str, *args: Any) -> dict[str, Any]:
    """``run(*args)``; a run that raised (a timeout, a crash of the harness's own check) is a
    failed run of that contender, not the end of the benchmark."""
    try:
        return run(*args)
    except Exception as exc:  # any failure is this contender's, and is shown
        return {
            "contender": name,
            "complete": False,
            "requests": 0,
            "wall_s": float("nan"),
            "http_rejections": 0,
            "command_refusals": 0,
            "peak_mb": 0.0,
            "sandbox_cpu_s": 0.0,
            "error": f"{type(exc).__name__}: {exc}"[:160],
        }


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one contender as one figure: the median wall time and its range over
    complete runs, the worst of everything else; complete only if every run was, with the
    failed runs' reasons."""
    failed = [r for r in runs if not r["complete"]]
    walls = [r["wall_s"] for r in runs if r["complete"]] or [float("nan")]
    median = statistics.median(walls)
    cpu = statistics.median(r["sandbox_cpu_s"] for r in runs)
    return {
        **runs[0],
        "complete": not failed,
        "runs": len(runs),
        "failed_runs": len(failed),
        "requests": max(r["requests"] for r in runs),
        "http_rejections": max(r["http_rejections"] for r in runs),
        "command_refusals": max(r["command_refusals"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "wall_s": round(median, 3),
        "walls": [r["wall_s"] for r in runs],
        "sandbox_cpu_s": round(cpu, 2),
        "sandbox_share": round(cpu / median, 3) if median == median and median else None,
        "error": "; ".join(sorted({r["error"] for r in failed}))[:300],
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _range(walls: list[float]) -> str:
    done = [w for w in walls if w == w]
    return f"{min(done):.2f}-{max(done):.2f}" if done else "n/a"


def comparison(
    figures: list[dict[str, Any]], ours: tuple[str, ...], done: tuple[str, str]
) -> tuple[str, float | None]:
    """A table of ``summary_of`` figures with each median wall time over the best complete
    peer's, and that best time. ``done`` is (column header, figure key) for what the contender
    delivered; a failed contender's row says FAILED, how many runs failed and why."""
    peers = [f["wall_s"] for f in figures if f["contender"] not in ours and f["complete"]]
    best = min(peers) if peers else None
    header, key = done
    rows = []
    for f in figures:
        delivered = f[key]
        if not f["complete"]:
            delivered = f"{delivered} (FAILED {f['failed_runs']}/{f['runs']} runs: {f['error']})"
        share = f.get("sandbox_share")
        rows.append(
            [
                f["contender"],
                delivered,
                f["requests"],
                f"{f['wall_s']:.2f}",
                _range(f["walls"]),
                f["http_rejections"],
                f["command_refusals"],
                f["peak_mb"],
                f"{share:.0%}" if share is not None else "n/a",
                f"{f['wall_s'] / best:.2f}" if best and f["complete"] else "n/a",
            ]
        )
    headers = [
        "contender",
        header,
        "requests",
        "wall s (median)",
        "range s",
        "HTTP rejections",
        "refused commands",
        "peak MB",
        "sandbox CPU / wall",
        "/ best peer",
    ]
    return table(headers, rows), best


@dataclass
class Results:
    """Per-contender run lists, filled in interleaved order."""

    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, name: str, figure: dict[str, Any]) -> None:
        self.runs.setdefault(name, []).append(figure)
        print(json.dumps({"contender": name, **figure}), file=sys.stderr, flush=True)

    def summaries(self, names: list[str]) -> list[dict[str, Any]]:
        return [{**summary_of(self.runs[name]), "contender": name} for name in names]
