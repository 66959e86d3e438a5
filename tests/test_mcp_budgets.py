"""What the model can make b24-mcp hold (review8 M3, and M2's ``.part`` half), through the SDK's
stdio client against the sandbox: every result stays under the 60 KB cap, a plan no human could
read whole is refused before it is stored, stored plans keep to a budget (CLI and MCP alike),
and an export killed mid-write leaves nothing that eats the export folder's budget."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from cli_support import Cli
from conftest import Sandbox
from mcp_support import Host, Result, server_env

CAP = 60_000


def _host(portal: Sandbox, tmp_path: Path, **env: str) -> Host:
    return Host(server_env(portal, tmp_path / "state", **env), tmp_path)


def _plans(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state").glob("*/plans/p-*.json"))


def _small(result: Result) -> int:
    size = len(result.text.encode("utf-8"))
    assert size <= CAP, (size, result.text[:300])
    return size


def test_b24_explain_takes_at_most_100_method_names(portal: Sandbox, tmp_path: Path) -> None:
    """Before: 20,000 names answered 6,128,891 bytes, one name of a million characters
    1,000,293 bytes. Now the tool's schema bounds both (the SDK refuses, saying which bound),
    and 100 names fit the cap."""
    host = _host(portal, tmp_path)
    known = [f"crm.lead.{verb}" for verb in ("add", "update", "delete", "get", "list")] * 20

    async def refused(client: Any, methods: list[str]) -> str:
        result = await client.call_tool("b24_explain", {"methods": methods})
        assert result.is_error
        text: str = result.content[0].text
        return text

    async def work(client: Any) -> tuple[str, str, Result]:
        many = await refused(client, [f"crm.x{n}" for n in range(20_000)])
        long = await refused(client, ["a" * 1_000_000])
        fine = await host.call(client, "b24_explain", {"methods": known})
        return many, long, fine

    many, long, fine = host.session(work)
    print(f"\n20,000 names: {len(many)} B; 1 MB name: {len(long)} B; 100: {_small(fine)} B")
    assert len(many) < 2_000 and "at most 100 items" in many, many
    assert len(long) < 2_000 and "at most 200 characters" in long, long
    assert not fine.error and len(fine.data) == 100
    assert {entry["risk"] for entry in fine.data} >= {"read", "write", "destructive"}


def test_a_plan_no_human_could_read_whole_is_refused_and_not_stored(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Before: a 20 MB TITLE was echoed whole (20,000,756 bytes) and stored (20 MB plan file),
    though its approval question could never be shown. Now: APPROVAL_TOO_LARGE at b24_plan,
    nothing stored, and a plan that can be shown is still made."""
    host = _host(portal, tmp_path)
    huge = {"fields": {"TITLE": "x" * 20_000_000}}
    calls = [{"method": "crm.lead.add", "params": {"fields": {"TITLE": "y" * 2_000}}}] * 100

    async def work(client: Any) -> tuple[Result, ...]:
        one = await host.call(client, "b24_plan", {"method": "crm.lead.add", "params": huge})
        bulk = await host.call(client, "b24_plan_batch", {"calls": calls})
        fits = await host.call(
            client, "b24_plan", {"method": "crm.lead.add", "params": {"fields": {"TITLE": "ok"}}}
        )
        return one, bulk, fits

    one, bulk, fits = host.session(work)
    print(f"\n20 MB plan: {_small(one)} B {one.data['error']['message']}")
    _small(bulk)
    assert one.code == "APPROVAL_TOO_LARGE" and "not stored" in one.data["error"]["message"]
    assert bulk.code == "APPROVAL_TOO_LARGE"
    assert not fits.error, fits.text
    assert [path.stem for path in _plans(tmp_path)] == [fits.data["plan_id"]]


def test_a_plan_past_the_result_cap_is_answered_by_its_summary_and_runs_whole(
    portal: Sandbox, tmp_path: Path
) -> None:
    """With B24_APPROVAL=off nobody reads the plan, so it may be long: the answer is the plan's
    summary (id, digest, sizes, where it is read whole), and what runs is the whole plan."""
    host = _host(portal, tmp_path, B24_APPROVAL="off")
    title = "long title " * 10_000  # 110,000 characters

    async def work(client: Any) -> tuple[Result, Result]:
        params = {"fields": {"TITLE": title}}
        made = await host.call(client, "b24_plan", {"method": "crm.lead.add", "params": params})
        assert not made.error, made.text[:300]
        ran = await host.call(client, "b24_execute_plan", {"plan_id": made.data["plan_id"]})
        return made, ran

    made, ran = host.session(work)
    print(f"\n110 KB plan answered in {_small(made)} B: {json.dumps(made.data['plan'])}")
    plan = made.data["plan"]
    assert plan["id"] == made.data["plan_id"] and len(plan["params_digest"]) >= 32
    assert plan["bytes_left_out"]["params"] > 110_000 and "params" not in plan
    (stored,) = _plans(tmp_path)
    assert str(stored) in made.data["shown"]["whole"] and title in stored.read_text()
    assert not ran.error, ran.text[:300]
    found = portal.rest("crm.lead.get", {"id": ran.data["result"]}).json()["result"]
    assert found["TITLE"] == title


def test_stored_plans_keep_to_their_budget_over_mcp_and_the_cli(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Before: no budget (b24_plan_batch wrote 40 MB plans, ~3 GB an hour). Now, with
    B24_PLANS_MAX_MB=1: plans are made until the next would pass 1 MB, then PLAN_STORE_FULL;
    ``b24 --plan-only`` shares the plan store and is refused the same way."""
    env = {"B24_APPROVAL": "off", "B24_PLANS_MAX_MB": "1"}
    host = _host(portal, tmp_path, **env)

    async def work(client: Any) -> list[Result]:
        made = []
        for n in range(5):
            params = {"fields": {"TITLE": f"{n} " + "z" * 330_000}}
            made.append(
                await host.call(client, "b24_plan", {"method": "crm.lead.add", "params": params})
            )
        return made

    made = host.session(work)
    codes = [result.code for result in made]
    print(f"\n5 plans of 330 KB under a 1 MB budget: {codes}")
    assert codes == ["", "", "", "PLAN_STORE_FULL", "PLAN_STORE_FULL"], made[-1].text[:300]
    assert "B24_PLANS_MAX_MB" in made[3].data["error"]["message"]
    held = sum(path.stat().st_size for path in (tmp_path / "state").glob("*/plans/*"))
    assert held <= 1 << 20 and len(_plans(tmp_path)) == 3

    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url, "B24_SERVER": "off", **env})
    params = json.dumps({"fields": {"TITLE": "c" * 120_000}})
    refused = cli("crm.lead.add", "--params", params, "--plan-only")
    assert refused.code == 2 and refused.error()["code"] == "PLAN_STORE_FULL", refused.err
    assert len(_plans(tmp_path)) == 3


# --- the export folder after a killed server (review8 M2, the .part half) ------------------------


def _exports(tmp_path: Path) -> Path:
    return tmp_path / "exports"


def test_an_export_killed_mid_write_leaves_no_part_for_the_next_server(
    portal: Sandbox, tmp_path: Path
) -> None:
    """Before: a SIGKILLed export's .part stayed a day and counted against
    B24_MCP_EXPORT_MAX_MB, so a few killed exports made every export EXPORT_TOO_LARGE. Now the
    next server removes it: its writer (the pid in its name) is gone."""
    portal.admin("seed", {"crm.lead": 400})
    portal.admin("faults", {"rules": [{"method": "crm.lead.list", "error": None, "delay_ms": 400}]})
    exports = _exports(tmp_path)
    host = _host(portal, tmp_path, B24_MCP_EXPORT_DIR=str(exports), B24_MCP_EXPORT_MAX_MB="1")
    killed: list[Path] = []

    async def kill_mid_export(client: Any) -> None:
        async def kill_once_writing() -> None:
            while not list(exports.glob("*.part")):
                await anyio.sleep(0.05)
            (part,) = exports.glob("*.part")
            killed.append(part)
            os.kill(int(part.name.split(".")[-2]), signal.SIGKILL)

        async with anyio.create_task_group() as group:
            group.start_soon(kill_once_writing)
            with contextlib.suppress(Exception):  # the server died under the call
                await client.call_tool("b24_export", {"method": "crm.lead.list"})
            group.cancel_scope.cancel()

    with contextlib.suppress(Exception):  # a killed server's transport ends in an error
        host.session(kill_mid_export)
    portal.admin("faults", {"rules": []})
    (part,) = killed
    assert part.exists(), "the kill left no .part: nothing was tested"
    again = host.one("b24_export", {"method": "crm.lead.list"})
    assert not again.error and again.data["rows"] == 400, again.text[:300]
    assert not part.exists() and not list(exports.glob("*.part"))


def _planted(folder: Path, pid: int, size: int, age_s: float) -> Path:
    path = folder / f"crm.lead.list-20261101T000000Z-{pid % 2**32:08x}.jsonl.{pid}.part"
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_part_files_go_only_once_their_writer_is_gone(portal: Sandbox, tmp_path: Path) -> None:
    """At start: a .part whose pid runs nothing, or runs a process younger than the file (the
    pid was reused), is removed; one whose writer lives is kept, and an export still works."""
    exports = _exports(tmp_path)
    exports.mkdir(mode=0o700)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = _planted(exports, int(ended.stdout), 2 << 20, 60)
    live = _planted(exports, os.getpid(), 10, 0)  # this test's process wrote it, just now
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reused = _planted(exports, newcomer.pid, 2 << 20, 3600)  # written before it started
        portal.rest("crm.lead.add", {"fields": {"TITLE": "exported"}})
        host = _host(portal, tmp_path, B24_MCP_EXPORT_DIR=str(exports), B24_MCP_EXPORT_MAX_MB="1")
        done = host.one("b24_export", {"method": "crm.lead.list"})
    finally:
        newcomer.kill()
        newcomer.wait()
    assert not done.error and done.data["rows"] == 1, done.text[:300]
    assert [p.exists() for p in (dead, live, reused)] == [False, True, False]


def test_the_plan_budget_holds_on_a_redis_store_too(portal: Sandbox, tmp_path: Path) -> None:
    """A fleet's plans live in Redis: the budget counts them there (B24_PLANS_MAX_MB=1, plans of
    120 KB made with ``b24 --plan-only``: eight fit, the ninth is PLAN_STORE_FULL)."""
    from redis_support import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        cli = Cli(
            tmp_path,
            {
                "B24_WEBHOOK_URL": portal.webhook_url,
                "B24_SERVER": "off",
                "B24_STATE_BACKEND": server.url,
                "B24_PLANS_MAX_MB": "1",
            },
        )
        codes = []
        for n in range(9):
            params = json.dumps({"fields": {"TITLE": f"{n} " + "r" * 120_000}})
            run = cli("crm.lead.add", "--params", params, "--plan-only")
            codes.append(run.error()["code"] if run.code else "")
        stored = sum(
            int(server.client().strlen(key)) for key in server.client().scan_iter("*plans:*")
        )
    finally:
        server.stop()
    print(f"\n9 plans of 120 KB on Redis under 1 MB: {codes}; {stored} bytes stored")
    assert codes == [""] * 8 + ["PLAN_STORE_FULL"]
    assert stored <= 1 << 20
