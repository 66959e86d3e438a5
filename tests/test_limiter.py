"""The shared limiter: its bucket model never lets the portal's bucket overflow (property test),
and real processes sharing the file limiter stay under a standard-plan sandbox's limit while the
same load without it is refused. Timing is not asserted here; bench/ measures it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import OperationTimeLimitError
from b24agent.rest.client import Bitrix24Client
from b24agent.rest.limiter import BucketModel, RateLimiter, memory_bucket
from b24agent.settings import Settings
from client_support import settings_for, webhook_env
from conftest import ROOT, Sandbox
from hypothesis import given, settings
from hypothesis import strategies as st

PLANS = st.sampled_from([(2.0, 50), (5.0, 250), (50.0, 500)])


def portal_level_ok(sends: list[float], rate: float, capacity: int, *, ticks: bool) -> bool:
    """Replay ``sends`` against the portal's bucket: continuous drain, or (``ticks``) the docs'
    reading where the counter drops by ``rate`` once per whole second."""
    level, last = 0.0, None
    for at in sorted(sends):
        if last is not None:
            if ticks:
                level = max(0.0, level - rate * (math.floor(at) - math.floor(last)))
            else:
                level = max(0.0, level - rate * (at - last))
        last = at
        if level + 1 > capacity + 1e-9:
            return False
        level += 1
    return True


@settings(max_examples=200, deadline=None)
@given(
    plan=PLANS,
    gaps=st.lists(st.floats(min_value=0, max_value=2.0), min_size=1, max_size=400),
    ticks=st.booleans(),
)
def test_bucket_model_never_overflows_the_portal(
    plan: tuple[float, int], gaps: list[float], ticks: bool
) -> None:
    rate, burst = plan
    model = BucketModel.for_plan(rate, burst)
    tat, now, sends = 0.0, 1000.0, []
    for gap in gaps:
        now += gap
        send_at, tat = model.reserve(tat, now)
        assert send_at >= now
        sends.append(send_at)
    assert portal_level_ok(sends, rate, burst, ticks=ticks)


def test_bucket_model_sustains_close_to_the_plan_rate() -> None:
    model = BucketModel.for_plan(2.0, 50)
    tat, sends = 0.0, []
    for _ in range(320):
        send_at, tat = model.reserve(tat, 0.0)
        sends.append(send_at)
    ideal = (320 - 50) / 2.0
    assert ideal <= sends[-1] <= ideal * 1.1


def test_rejection_fills_the_bucket() -> None:
    """After a 503 the next request waits one drain interval, however empty our model was."""
    waits: list[float] = []
    settings = Settings(base_url="http://127.0.0.1:1", auth_mode="webhook", rate=2.0, burst=50)
    bucket = memory_bucket(settings, clock=lambda: ("test", 100.0))
    limiter = RateLimiter(settings, bucket, sleep=waits.append, clock=lambda: 100.0)
    limiter.acquire()
    assert waits == []
    limiter.rejected()
    limiter.acquire()
    assert waits == [pytest.approx(limiter.model.interval)]


def test_blocked_method_waits_for_its_reset_within_the_cap() -> None:
    clock = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    settings = Settings(base_url="http://127.0.0.1:1", auth_mode="webhook", rate=2.0, burst=50)
    limiter = RateLimiter(settings, memory_bucket(settings), sleep=sleep, clock=lambda: clock[0])
    limiter.blocked("webhook:1|crm.lead.list", 105.0)
    limiter.acquire("webhook:1|crm.lead.get")  # other methods are not held, nor delayed
    assert waits == []
    assert limiter.acquire("webhook:1|crm.lead.list") == pytest.approx(5.0)
    limiter.blocked("webhook:1|crm.lead.list", clock[0] + settings.max_operating_wait_s + 1)
    with pytest.raises(OperationTimeLimitError) as info:
        limiter.acquire("webhook:1|crm.lead.list")
    assert info.value.details["operating_reset_at"] == int(clock[0] + 61)


WORKER = ROOT / "bench" / "limiter_worker.py"


def run_processes(
    portal: Sandbox,
    tmp_path: Path,
    processes: int,
    calls: int,
    extra: dict[str, str],
    launcher: tuple[str, ...] = (str(WORKER),),
) -> list[dict[str, Any]]:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    go = tmp_path / "go"
    env = {**os.environ, **webhook_env(portal, tmp_path / "state"), **extra}
    workers = [
        subprocess.Popen(
            [sys.executable, *launcher, str(go), str(empty), str(calls)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    time.sleep(0.5)
    go.touch()
    return [json.loads(w.communicate(timeout=120)[0]) for w in workers]


def test_processes_sharing_the_file_limiter_are_never_refused(
    start_sandbox: Any, tmp_path: Path
) -> None:
    portal = start_sandbox("--plan", "standard")
    # 56 calls: more than the burst of 50, so the limiter has to pace the tail.
    reports = run_processes(portal, tmp_path, 4, 14, {"B24_RATE_LIMITER": "file"})
    assert sum(r["refused"] for r in reports) == 0
    stats = portal.stats()
    assert stats["rate_limit_rejections"] == 0
    assert stats["by_method"]["user.current"] == 56


def test_a_step_of_the_wall_clock_does_not_let_the_limiter_send_early(
    start_sandbox: Any, tmp_path: Path
) -> None:
    """The wall clock steps a minute ahead after 40 of 56 calls, while the bucket is nearly
    full: a model kept on the wall clock saw it drained and sent the other 16 at once."""
    portal = start_sandbox("--plan", "standard")
    stepped = (str(Path(__file__).with_name("stepped_clock.py")), "60", "40")
    [report] = run_processes(portal, tmp_path, 1, 56, {"B24_RATE_LIMITER": "file"}, stepped)
    assert report["failed"] == 0
    stats = portal.stats()
    assert stats["by_method"]["user.current"] == 56
    assert stats["rate_limit_rejections"] == 0


def test_the_same_load_without_the_limiter_is_refused(start_sandbox: Any, tmp_path: Path) -> None:
    """Control for the test above: it can fail, because this load does trip the portal."""
    portal = start_sandbox("--plan", "standard")
    run_processes(portal, tmp_path, 4, 14, {"B24_RATE_LIMITER": "off", "B24_MAX_RETRIES": "0"})
    assert portal.stats()["rate_limit_rejections"] > 0


def test_limiter_state_file_is_private(portal: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(portal, tmp_path)
    Bitrix24Client(settings).call("user.current")
    assert settings.rate_limiter_file.stat().st_mode & 0o777 == 0o600
    assert "tat" in json.loads(settings.rate_limiter_file.read_text())["bucket"]
