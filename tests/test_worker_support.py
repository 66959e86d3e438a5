"""Helpers for the offline worker tests (no tests here): run the worker as the real subprocess it
is in production, read the portal's queue over OAuth, and test handlers the worker imports with
``--handler test_worker_support:NAME`` (tests put this folder on the worker's PYTHONPATH).

The handlers read their knobs from the environment because they run inside the worker process:
``WORKER_TEST_SINK`` (JSONL file they append handled events to), ``WORKER_TEST_FAIL_RATE``
(probability of a retryable failure), ``WORKER_TEST_FAIL_IDS`` (event IDs that always fail),
``WORKER_TEST_DELAY`` (seconds to sleep per event).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from b24agent.cli.sandbox_env import oauth_env

TESTS = Path(__file__).resolve().parent
WORKER_SCRIPT = TESTS.parent / "skills" / "bitrix24-agent" / "scripts" / "offline_sync_worker.py"


# --- handlers imported by the worker process --------------------------------------------------


def _append(delivery: dict[str, Any]) -> None:
    line = json.dumps({"id": str(delivery["event"]["ID"]), "delivery_id": delivery["delivery_id"]})
    fd = os.open(os.environ["WORKER_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def flaky_sink(delivery: dict[str, Any]) -> None:
    """Fails (retryably) with probability WORKER_TEST_FAIL_RATE, else records the event."""
    delay = float(os.environ.get("WORKER_TEST_DELAY", "0"))
    if delay:
        time.sleep(delay)
    if random.random() < float(os.environ.get("WORKER_TEST_FAIL_RATE", "0")):
        raise RuntimeError("injected handler failure")
    fail_ids = set(filter(None, os.environ.get("WORKER_TEST_FAIL_IDS", "").split(",")))
    if str(delivery["event"]["ID"]) in fail_ids:
        raise RuntimeError(f"event {delivery['event']['ID']} always fails")
    _append(delivery)


# --- running the worker -----------------------------------------------------------------------


def worker_env(portal: Any, state_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a worker on ``portal`` (OAuth app), state under ``state_dir``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("B24_") and not key.startswith("WORKER_TEST_")
    }
    env.update(
        oauth_env(portal.url, portal.oauth),
        B24_STATE_DIR=str(state_dir),
        B24_RATE_LIMITER="off",
        PYTHONPATH=str(TESTS),
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), *args],
        env=env,
        cwd=str(TESTS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_worker(
    env: dict[str, str],
    *args: str,
    timeout: float = 120,
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the worker to its end; ``preexec`` runs in the child first (a resource limit)."""
    return subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), *args],
        env=env,
        cwd=str(TESTS),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


def kill_repeatedly(
    env: dict[str, str],
    args: Sequence[str],
    sink: Path,
    rng: random.Random,
    *,
    kills: int,
    rounds: int,
    most_lines: int,
    most_sleep_s: float,
    after_round: Callable[[], None] = lambda: None,
) -> int:
    """Start the worker again and again and SIGKILL it, until ``kills`` kills or ``rounds``
    rounds: odd rounds anywhere (a random sleep up to ``most_sleep_s``: start-up, adoption and
    the get -> checkpoint window included), even rounds mid-reservation (once the sink grew by
    1 to ``most_lines`` lines). ``after_round`` looks at what each dead worker left. Returns the
    kills made (fewer than ``kills``: the queue drained first)."""
    made = 0
    for round_ in range(rounds):
        if made == kills:
            break
        proc = start_worker(env, *args)
        if round_ % 2:
            time.sleep(rng.uniform(0.05, most_sleep_s))
        else:
            wait_for_lines(sink, line_count(sink) + rng.randint(1, most_lines), proc, timeout=30)
        if proc.poll() is None:
            proc.kill()
            made += 1
        proc.communicate(timeout=30)
        after_round()
    return made


def summary_of(stdout: str) -> dict[str, Any]:
    """The JSON summary: the only line on stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout should hold one summary line, got {stdout!r}"
    return json.loads(lines[0])


def error_of(stderr: str) -> dict[str, Any]:
    """The one-line JSON error at the end of stderr (log lines come before it)."""
    assert "Traceback" not in stderr, stderr
    return json.loads(stderr.strip().splitlines()[-1])["error"]


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[str], timeout: float) -> int:
    """Poll until ``path`` holds ``count`` lines (or the process ended); return lines seen."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = line_count(path)
        if seen >= count or proc.poll() is not None:
            return seen
        time.sleep(0.005)
    return seen


def wait_for_stderr(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    """Read the worker's stderr until a line containing ``needle`` appears."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not on stderr: {''.join(seen)}")


def terminate(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return out, err


# --- reading results --------------------------------------------------------------------------


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def handled_counts(path: Path) -> Counter[str]:
    """How many times each event ID reached the handler's sink."""
    return Counter(str(item.get("id") or item["event"]["ID"]) for item in jsonl(path))


def duplicates(counts: Counter[str]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def open_dlq(path: Path) -> dict[str, dict[str, Any]]:
    """delivery id -> entry for DLQ entries not closed by a ``replayed`` line."""
    entries: dict[str, dict[str, Any]] = {}
    for record in jsonl(path):
        if record["status"] == "dead":
            entries[record["delivery_id"]] = record
        else:
            entries.pop(record["delivery_id"], None)
    return entries


# --- talking to the portal as the OAuth app ---------------------------------------------------


def oauth_call(portal: Any, method: str, params: dict[str, Any] | None = None) -> Any:
    """One REST call with the app's access token; returns ``result`` (fails on an error body)."""
    response = portal.session.post(
        f"{portal.url}/rest/{method}",
        json={**(params or {}), "auth": portal.oauth["access_token"]},
        timeout=30,
    )
    body = response.json()
    assert "error" not in body, f"{method}: {body}"
    return body["result"]


def queue_rows(portal: Any, connector: str | None = None) -> list[dict[str, Any]]:
    """Every row of the app's offline queue (event.offline.list, all pages), or of the queue
    of this ``auth_connector``."""
    rows: list[dict[str, Any]] = []
    scope = {"auth_connector": connector} if connector else {}
    while True:
        page = oauth_call(portal, "event.offline.list", {"start": len(rows), **scope})
        page = list(page.values()) if isinstance(page, dict) else page
        rows.extend(page)
        if len(page) < 50:
            return rows


def seed_events(portal: Any, count: int) -> list[str]:
    """Queue ``count`` offline events; returns their IDs."""
    portal.admin("seed", {"event.offline": count})
    return [str(row["ID"]) for row in queue_rows(portal)]
