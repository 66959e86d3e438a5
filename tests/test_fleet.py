"""A fleet on one portal: three "hosts" (own state folder, HOME and working folder each) sharing
one real redis-server through B24_STATE_BACKEND, against the sandbox portal.

What must hold: the shared limiter keeps 24 processes inside a standard plan's bucket; an
expired token is refreshed once for 30 processes; one idempotency key makes one record and one
lead; a plan runs once; three workers drain the queue through SIGKILLs without losing an event;
and with Redis killed mid-run every call either succeeds or exits 6, and the token pair
survives. The three heavy ones (a minute or more each) run only under ``make fleet``
(FLEET_HEAVY=1), which runs the whole file.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCRIPT
from client_support import oauth_env, webhook_env
from conftest import ROOT, Sandbox
from redis_support import RedisServer, host_env
from test_auth_refresh import WORKER as REFRESH_WORKER
from test_auth_refresh import token_server
from test_worker_support import (
    TESTS,
    WORKER_SCRIPT,
    duplicates,
    handled_counts,
    line_count,
    queue_rows,
    seed_events,
    summary_of,
    wait_for_lines,
    worker_env,
)

HOSTS = 3
heavy = pytest.mark.skipif(
    os.environ.get("FLEET_HEAVY") != "1", reason="a minute or more: run with make fleet"
)
LIMITER_WORKER = ROOT / "bench" / "limiter_worker.py"

#: One OS process: wait for the go file, make CALLS user.current calls through one client,
#: print the exit code each call would have had (0, or the error's exit code).
CALLER = r"""
import json, sys, time
from pathlib import Path
from b24agent.errors import B24Error
from b24agent.rest.client import Bitrix24Client
from b24agent.settings import load_settings

go, calls = Path(sys.argv[1]), int(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
codes = []
with Bitrix24Client(load_settings(env_file=sys.argv[2])) as client:
    for _ in range(calls):
        try:
            client.call("user.current")
            codes.append(0)
        except B24Error as exc:
            codes.append(exc.exit_code)
        time.sleep(0.05)
print(json.dumps({"codes": codes, "refreshes": client._auth.refreshes}))
"""


@pytest.fixture
def fleet_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def hosts(tmp_path: Path, base: dict[str, str], url: str) -> list[tuple[Path, dict[str, str]]]:
    """(working folder, environment) of each host."""
    found = []
    for number in range(HOSTS):
        folder = tmp_path / f"host{number}"
        found.append((folder / "work", host_env(base, folder, url)))
    return found


def start_all(
    tmp_path: Path,
    fleet: list[tuple[Path, dict[str, str]]],
    per_host: int,
    program: list[str],
    *extra: str,
) -> tuple[list[subprocess.Popen[str]], Path]:
    """``per_host`` processes of ``program GO ENV_FILE *extra`` on every host, all waiting for
    the returned go file."""
    go, empty = tmp_path / "go", tmp_path / "empty.env"
    empty.write_text("")
    procs = [
        subprocess.Popen(
            [sys.executable, *program, str(go), str(empty), *extra],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            text=True,
        )
        for cwd, env in fleet
        for _ in range(per_host)
    ]
    return procs, go


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@heavy
def test_three_hosts_share_one_bucket(start_sandbox: Any, tmp_path: Path, fleet_redis) -> None:
    """3 x 8 processes, 12 calls each: 288 calls, the bucket's burst and then two minutes at its
    drain rate, so start-up costs weigh little in the share of the allowance."""
    portal = start_sandbox("--plan", "standard")
    base = {**webhook_env(portal, tmp_path), "B24_RATE_LIMITER": "file"}
    fleet = hosts(tmp_path, base, fleet_redis.url)
    procs, go = start_all(tmp_path, fleet, 8, [str(LIMITER_WORKER)], "12")
    time.sleep(2.0)  # every interpreter imported and waiting
    started = time.time()
    go.touch()
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    elapsed = max(r["finished"] for r in reports) - started
    total = sum(r["sent"] for r in reports)
    ideal = (total - 50) / 2.0
    stats = portal.stats()
    print(
        f"\nfleet limiter: {len(procs)} processes, {total} calls in {elapsed:.1f} s, ideal "
        f"{ideal:.1f} s, share of allowance {ideal / elapsed:.1%}, "
        f"rejections {stats['rate_limit_rejections']}"
    )
    assert sum(r["failed"] for r in reports) == 0
    assert stats["rate_limit_rejections"] == 0
    assert stats["by_method"]["user.current"] == 288
    assert ideal / elapsed >= 0.95


def test_thirty_processes_on_three_hosts_refresh_once(
    portal: Sandbox, tmp_path: Path, fleet_redis
) -> None:
    portal.admin("expire-tokens", {})
    fleet = hosts(tmp_path, oauth_env(portal, tmp_path), fleet_redis.url)
    procs, go = start_all(tmp_path, fleet, 10, ["-c", REFRESH_WORKER])
    time.sleep(1.0)
    go.touch()
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(r["ok"] for r in reports), reports
    assert sum(r["refreshes"] for r in reports) == 1
    assert portal.stats()["token_refreshes"] == 1
    # No host wrote a token file: the pair lives in Redis only.
    assert not list(tmp_path.glob("host*/state/*/oauth-*.json"))
    stored = json.loads(fleet_redis.client().get(_one_key(fleet_redis, "*:tokens:oauth-*")))
    assert "access_token" in token_server(portal, stored["refresh_token"])


def _one_key(server: RedisServer, pattern: str) -> bytes:
    keys = server.client().scan_iter(match=f"b24:{pattern}")
    keys = [k for k in keys if not k.endswith((b":fence", b":lease", b":written"))]
    assert len(keys) == 1, keys
    return keys[0]


def test_one_idempotency_key_on_three_hosts_makes_one_lead(
    portal: Sandbox, tmp_path: Path, fleet_redis
) -> None:
    fleet = hosts(tmp_path, webhook_env(portal, tmp_path), fleet_redis.url)
    params = json.dumps({"fields": {"TITLE": "fleet-once"}})
    args = ["crm.lead.add", "--params", params, "--confirm-write", "--idempotency-key", "fleet-k1"]
    procs = [cli(*fleet[i % HOSTS], *args) for i in range(20)]
    codes = [p.wait(120) for p in procs]
    assert set(codes) <= {0, 5}, [p.stderr.read() for p in procs]
    leads = portal.rest("crm.lead.list", {"filter": {"TITLE": "fleet-once"}}).json()["result"]
    assert len(leads) == 1
    records = list(fleet_redis.client().scan_iter(match="b24:*:idempotency:*"))
    assert len(records) == 1
    assert not list(tmp_path.glob("host*/state/*/idempotency/*.json"))


def test_a_plan_runs_once_from_three_hosts(portal: Sandbox, tmp_path: Path, fleet_redis) -> None:
    fleet = hosts(tmp_path, webhook_env(portal, tmp_path), fleet_redis.url)
    params = json.dumps({"fields": {"TITLE": "fleet-plan"}})
    made = cli(*fleet[0], "crm.lead.add", "--params", params, "--plan-only")
    out, err = made.communicate(timeout=60)
    assert made.returncode == 0, err
    plan_id = json.loads(out)["plan"]["id"]
    procs = [cli(*host, "--execute-plan", plan_id) for host in fleet]
    codes = sorted(p.wait(120) for p in procs)
    assert codes == [0, 5, 5], [p.stderr.read() for p in procs]
    leads = portal.rest("crm.lead.list", {"filter": {"TITLE": "fleet-plan"}}).json()["result"]
    assert len(leads) == 1


EVENTS = 10_000
KILLS = 5


@pytest.mark.slow
@heavy
def test_three_workers_drain_through_kills(portal: Sandbox, tmp_path: Path, fleet_redis) -> None:
    rng = random.Random(18)
    ids = set(seed_events(portal, EVENTS))
    assert len(ids) == EVENTS
    sink = tmp_path / "handled.jsonl"
    envs = []
    for number in range(HOSTS):
        folder = tmp_path / f"host{number}"
        (folder / "work").mkdir(parents=True)
        extra = {"B24_STATE_BACKEND": fleet_redis.url, "HOME": str(folder)}
        envs.append(worker_env(portal, folder / "state", WORKER_TEST_SINK=str(sink), **extra))
    args = ["--drain", "--handler", "test_worker_support:flaky_sink", "--limit", "500"]
    args += ["--log-level", "warning"]

    def start(host: int) -> subprocess.Popen[str]:
        folder = tmp_path / f"host{host}" / "work"
        return subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), *args],
            env=envs[host],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    running = {host: start(host) for host in range(HOSTS)}
    kills = 0
    while kills < KILLS:
        victim = rng.randrange(HOSTS)
        proc = running[victim]
        wait_for_lines(sink, line_count(sink) + rng.randint(50, 700), proc, timeout=60)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=30)
        running[victim] = start(victim)  # the same host comes back at once
    for proc in running.values():
        proc.communicate(timeout=300)
    finals = [
        subprocess.run(
            [sys.executable, str(WORKER_SCRIPT), *args],
            env=envs[host],
            cwd=TESTS,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for host in range(HOSTS)
    ]
    assert all(f.returncode == 0 for f in finals), [f.stderr for f in finals]
    assert all(summary_of(f.stdout)["queue_empty"] for f in finals)
    counts = handled_counts(sink)
    print(f"\nfleet workers: kills={kills} handled={len(counts)} duplicates={duplicates(counts)}")
    assert set(counts) == ids, f"lost {len(ids - set(counts))} event(s)"
    assert duplicates(counts) <= kills
    assert queue_rows(portal) == []


@pytest.mark.slow
@heavy
def test_redis_killed_mid_run_loses_no_token_pair(portal: Sandbox, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", aof=True).start()
    try:
        base = {**oauth_env(portal, tmp_path), "B24_MAX_RETRIES": "1", "B24_RETRY_BASE_SEC": "0.05"}
        fleet = hosts(tmp_path, base, server.url)
        procs, go = start_all(tmp_path, fleet, 4, ["-c", CALLER], "40")
        time.sleep(1.0)
        go.touch()
        time.sleep(0.7)
        portal.admin("expire-tokens", {})  # the refresh falls into the outage or right after
        server.kill()
        time.sleep(1.5)
        server.start()
        reports = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    finally:
        server.stop()
    codes = [code for r in reports for code in r["codes"]]
    print(
        f"\nredis outage: {len(codes)} calls, {codes.count(0)} done, {codes.count(6)} exit 6, "
        f"refreshes {sum(r['refreshes'] for r in reports)}"
    )
    assert set(codes) <= {0, 6}
    assert codes.count(6) > 0, "the outage was not noticed"
    assert all(r["codes"][-1] == 0 for r in reports), "a process did not recover"
    assert sum(r["refreshes"] for r in reports) == portal.stats()["token_refreshes"] == 1
    server.start()
    try:
        stored = json.loads(server.client().get(_one_key(server, "*:tokens:oauth-*")))
    finally:
        server.stop()
    assert "access_token" in token_server(portal, stored["refresh_token"])


def test_unreachable_redis_is_exit_6_and_nothing_sent(portal: Sandbox, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens on its port
    cwd, env = hosts(tmp_path, webhook_env(portal, tmp_path), server.url)[0]
    run = cli(cwd, env, "user.current")
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 6, err
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "STATE_BACKEND_UNREACHABLE"
    assert portal.stats()["by_method"].get("user.current", 0) == 0
    assert not list((tmp_path / "host0" / "state").glob("*/ratelimit.json")), "a local fallback"


def test_state_backend_setting_is_checked(tmp_path: Path) -> None:
    env = {**os.environ, "B24_STATE_BACKEND": "memcached://x", "B24_WEBHOOK_URL": "x"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "user.current"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 4
    assert "memcached" not in run.stderr  # the value may hold a password: never echoed
