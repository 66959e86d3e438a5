"""b24-mcp in front of the broker: run as the agent's OS user, it holds no secret; the broker
runs every tool under its own policy and a person approves the write through the broker."""

from __future__ import annotations

import pwd
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from broker_support import PYTHON, Accounts, Broker, can_make_users
from conftest import Sandbox
from hostile_support import BIG_ERROR, ERROR_LINE_MAX, always, hostile
from mcp_support import SERVER, Host, answering
from test_broker import broker  # noqa: F401 - the broker tests' own fixture

pytestmark = pytest.mark.skipif(
    not can_make_users() or shutil.which("runuser") is None, reason="needs root and useradd"
)


def _agent_host(accounts: Accounts, served: Broker, asked: list[str]) -> Host:
    """b24-mcp as the agent's uid, in front of ``served``; its questions land in ``asked``."""
    assert PYTHON is not None
    python, python_env = PYTHON
    home = accounts.agent_home
    env = {
        **python_env,
        "HOME": str(home),
        "B24_BROKER": f"unix:{served.socket}",
        "B24_MCP_EXPORT_DIR": str(home / "exports"),
        "B24_PACKS": "all",  # the agent's side tries to widen; the broker's policy decides
        "B24_APPROVAL": "off",
    }
    host = Host(env, home, elicit=answering("accept", asked=asked))  # cwd: the agent's home
    host.command = ["runuser", "-u", accounts.agent, "--", python, str(SERVER)]
    return host


def test_the_mcp_server_in_front_of_the_broker_holds_no_secret_and_a_person_approves(
    accounts: Accounts,
    broker: Broker,  # noqa: F811
    portal: Sandbox,
) -> None:
    asked: list[str] = []
    host = _agent_host(accounts, broker, asked)
    home = accounts.agent_home

    async def work(client: Any) -> Any:
        me = await host.call(client, "b24_call", {"method": "user.current"})
        unlisted = await host.call(client, "b24_call", {"method": "im.recent.list"})
        params = {"fields": {"TITLE": "via mcp and broker"}}
        plan = await host.call(client, "b24_plan", {"method": "crm.lead.add", "params": params})
        assert not plan.error, plan.text

        async def approve() -> None:
            await anyio.sleep(1.5)
            assert portal.stats()["by_method"].get("crm.lead.add", 0) == 0  # still waiting
            done = await anyio.to_thread.run_sync(
                lambda: broker.admin("approve", plan.data["plan_id"], "--yes")
            )
            assert done.code == 0, done.err

        async with anyio.create_task_group() as group:
            group.start_soon(approve)
            ran = await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})
        export = await host.call(client, "b24_export", {"method": "crm.lead.list"})
        return me, unlisted, ran, export

    me, unlisted, ran, export = host.session(work)
    assert me.data["result"]["ID"] == str(portal.webhook["user_id"])
    assert unlisted.error and unlisted.code == "OUTSIDE_OPERATOR_CEILING"  # B24_PACKS=all ignored
    assert not ran.error, ran.text
    assert asked == []  # the person approved through the broker, not the MCP client
    found = portal.rest("crm.lead.list", {"filter": {"TITLE": "via mcp and broker"}}).json()
    assert len(found["result"]) == 1
    assert not export.error, export.text
    assert Path(export.data["path"]).parent == home / "exports" and export.data["rows"] >= 1
    secret = portal.webhook["code"]
    assert all(secret not in text for text in host.texts)
    assert secret not in host.errlog.read_text()
    lines = broker.audit_lines()[-4:]
    assert [line["method"] for line in lines] == [
        "crm.lead.add",
        "crm.lead.add",
        "crm.lead.add",
        "crm.lead.list",
    ]
    assert [line["outcome"] for line in lines] == ["planned", "approved", "ok", "ok"]
    # The kernel's uid, and the MCP server's own word on its client and tool, kept apart.
    agent_uid = pwd.getpwnam(accounts.agent).pw_uid
    called = [line for line in lines if line["origin"]["via"] == "broker"]
    assert {line["origin"]["uid"] for line in called} == {agent_uid}
    assert [line["origin"]["claimed"]["tool"] for line in called] == [
        "b24_plan",
        "b24_execute_plan",
        "b24_export",
    ]
    assert all(line["origin"]["claimed"]["via"] == "mcp" for line in called)


def test_a_megabyte_portal_error_through_the_broker_is_cut_and_the_export_answers(
    accounts: Accounts, sandbox_proc: Sandbox
) -> None:
    """Review 7, M1: b24_export read the child's stdout to its end before its stderr, so a
    child writing an error line past the pipe's 64 KB never ended, and neither did the tool."""
    with hostile(always(400, BIG_ERROR), fuse=100) as portal:
        credentials = f"B24_WEBHOOK_URL={portal.webhook_url}\n"
        broker = Broker(accounts, sandbox_proc, "hostile", credentials, B24_APPROVAL="off")
        host = _agent_host(accounts, broker, [])

        async def work(client: Any) -> Any:
            with anyio.fail_after(60):
                call = await host.call(client, "b24_call", {"method": "crm.lead.list"})
                export = await host.call(client, "b24_export", {"method": "crm.lead.list"})
                return call, export

        try:
            call, export = host.session(work)
        finally:
            broker.stop()
    for result in (call, export):
        assert result.error and result.code == "ERROR_CORE", result.text[:300]
        assert len(result.text.encode()) < ERROR_LINE_MAX
