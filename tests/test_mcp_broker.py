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
from mcp_support import SERVER, Host, answering
from test_broker import broker  # noqa: F401 - the broker tests' own fixture

pytestmark = pytest.mark.skipif(
    not can_make_users() or shutil.which("runuser") is None, reason="needs root and useradd"
)


def test_the_mcp_server_in_front_of_the_broker_holds_no_secret_and_a_person_approves(
    accounts: Accounts,
    broker: Broker,  # noqa: F811
    portal: Sandbox,
) -> None:
    assert PYTHON is not None
    python, python_env = PYTHON
    home = accounts.agent_home
    env = {
        **python_env,
        "HOME": str(home),
        "B24_BROKER": f"unix:{broker.socket}",
        "B24_MCP_EXPORT_DIR": str(home / "exports"),
        "B24_PACKS": "all",  # the agent's side tries to widen; the broker's policy decides
        "B24_APPROVAL": "off",
    }
    asked: list[str] = []
    host = Host(env, home, elicit=answering("accept", asked=asked))  # cwd: the agent's home
    host.command = ["runuser", "-u", accounts.agent, "--", python, str(SERVER)]

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
