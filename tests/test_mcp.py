"""b24-mcp driven by the MCP SDK's own stdio client against the sandbox (issue 16).

Every tool call goes host -> server subprocess -> guard pipeline -> sandbox over real HTTP. The
elicitation tests run on both protocol eras the SDK speaks: 2026-07-28 (``auto``: the question
rides an InputRequiredResult round) and 2025-11-25 (``legacy``: a standalone elicitation/create
request, what Claude Desktop, Cursor and VS Code send today).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Sandbox
from disk_support import fill, small_tmpfs
from mcp_support import Host, answering, server_env

TOOLS = {
    "b24_call",
    "b24_plan",
    "b24_execute_plan",
    "b24_plan_batch",
    "b24_export",
    "b24_explain",
    "b24_packs",
}
MODES = ("auto", "legacy")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _host(portal: Sandbox, tmp_path: Path, state: Path, **kwargs: Any) -> Host:
    env = kwargs.pop("env", {})
    return Host(server_env(portal, state, **env), tmp_path, **kwargs)


def _leads(portal: Sandbox, title: str) -> list[dict[str, Any]]:
    body = portal.rest("crm.lead.list", {"filter": {"TITLE": title}, "select": ["ID"]}).json()
    return body["result"]


def _audit(state: Path) -> list[dict[str, Any]]:
    (log,) = state.glob("*/audit.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def _secrets(portal: Sandbox) -> list[str]:
    oauth = portal.oauth
    return [
        portal.webhook["code"],
        portal.admin_token,
        *(str(oauth[k]) for k in ("client_secret", "access_token", "refresh_token")),
    ]


def _plan_add(host: Host, client: Any, title: str) -> Any:
    params = {"fields": {"TITLE": title}}
    return host.call(client, "b24_plan", {"method": "crm.lead.add", "params": params})


# --- tools, a read, reads only ------------------------------------------------------------------


def test_tools_are_listed_with_schemas_and_references_as_resources(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    host = _host(portal, tmp_path, state)

    async def work(client: Any) -> Any:
        return await client.list_tools(), await client.list_resources()

    tools, resources = host.session(work)
    by_name = {tool.name: tool for tool in tools.tools}
    assert set(by_name) == TOOLS
    for tool in by_name.values():
        assert tool.description and "\n" not in tool.description
        assert tool.input_schema["type"] == "object"
    call = by_name["b24_call"].input_schema
    assert call["required"] == ["method"]
    assert set(call["properties"]) == {"method", "params", "api"}
    assert by_name["b24_execute_plan"].input_schema["required"] == ["plan_id"]
    assert by_name["b24_call"].annotations.read_only_hint is True
    uris = {str(r.uri) for r in resources.resources}
    assert {"b24://references/packs.md", "b24://references/bitrix24.md"} <= uris


def test_a_read_returns_the_result_and_the_audit_names_client_and_tool(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    host = _host(portal, tmp_path, state)
    me = host.one("b24_call", {"method": "user.current"})
    assert not me.error, me.text
    assert me.data["result"]["ID"] == str(portal.webhook["user_id"])
    (line,) = _audit(state)
    assert line["method"] == "user.current" and line["outcome"] == "ok"
    assert line["origin"] == {
        "via": "mcp",
        "transport": "stdio",
        "client": "mcp 0.1.0",
        "tool": "b24_call",
    }


def test_b24_call_refuses_a_write_and_sends_nothing(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    host = _host(portal, tmp_path, state)
    params = {"fields": {"TITLE": "via b24_call"}}
    refused = host.one("b24_call", {"method": "crm.lead.add", "params": params})
    assert refused.error and refused.code == "READS_ONLY"
    assert "b24_plan" in refused.data["error"]["hint"]
    assert _leads(portal, "via b24_call") == []
    assert "crm.lead.add" not in portal.stats()["by_method"]


# --- plan, approve, execute -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_plan_then_execute_with_the_human_accepting_adds_one_record(
    mode: str, portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    asked: list[str] = []
    host = _host(portal, tmp_path, state, elicit=answering("accept", asked=asked), mode=mode)

    async def work(client: Any) -> Any:
        plan = await _plan_add(host, client, "approved by a human")
        assert not plan.error, plan.text
        assert "human" in plan.data["approval"]
        ran = await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})
        again = await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})
        return plan, ran, again

    plan, ran, again = host.session(work)
    assert not ran.error, ran.text
    assert ran.data["ran"] is True and isinstance(ran.data["result"], int)
    assert len(_leads(portal, "approved by a human")) == 1
    assert again.error and again.code == "PLAN_SPENT"
    (question,) = asked  # the spent plan is refused before anyone is asked
    assert "crm.lead.add" in question and "approved by a human" in question
    assert plan.data["plan_id"] in question
    executed = [line for line in _audit(state) if line["origin"]["tool"] == "b24_execute_plan"]
    assert [line["outcome"] for line in executed] == ["approved", "ok"]  # the human, then the run
    assert {line["plan_id"] for line in executed} == {plan.data["plan_id"]}
    assert executed[0]["plan_digest"] and executed[0]["origin"]["via"] == "mcp"


@pytest.mark.parametrize("action", ["decline", "cancel"])
@pytest.mark.parametrize("mode", MODES)
def test_a_declined_plan_sends_nothing_and_still_runs_later(
    mode: str, action: str, portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    no = _host(portal, tmp_path, state, elicit=answering(action), mode=mode)
    plan = no.one("b24_plan", {"method": "crm.lead.add", "params": {"fields": {"TITLE": "later"}}})
    plan_id = plan.data["plan_id"]
    refused = no.one("b24_execute_plan", {"plan_id": plan_id})
    assert refused.error and refused.code == "APPROVAL_DECLINED"
    assert "nothing was sent" in refused.data["error"]["message"]
    assert _leads(portal, "later") == []
    assert "crm.lead.add" not in portal.stats()["by_method"]
    answers = [line for line in _audit(state) if line["origin"]["tool"] == "b24_execute_plan"]
    (line,) = answers  # the human's answer, kept
    assert line["outcome"] == "declined" and line["error"] == "APPROVAL_DECLINED"
    assert line["origin"]["tool"] == "b24_execute_plan" and line["plan_digest"]

    yes = _host(portal, tmp_path, state, elicit=answering("accept"), mode=mode)
    ran = yes.one("b24_execute_plan", {"plan_id": plan_id})
    assert not ran.error, ran.text
    assert len(_leads(portal, "later")) == 1


def test_answering_no_in_the_form_counts_as_declined(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    host = _host(portal, tmp_path, state, elicit=answering("accept", approve=False))

    async def work(client: Any) -> Any:
        plan = await _plan_add(host, client, "unticked")
        return await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})

    refused = host.session(work)
    assert refused.error and refused.code == "APPROVAL_DECLINED"
    assert _leads(portal, "unticked") == []


@pytest.mark.parametrize("mode", MODES)
def test_a_client_without_elicitation_is_refused_unless_the_operator_allows_it(
    mode: str, portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    host = _host(portal, tmp_path, state, mode=mode)

    async def work(client: Any) -> Any:
        plan = await _plan_add(host, client, "no human here")
        return await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})

    refused = host.session(work)
    assert refused.error and refused.code == "APPROVAL_UNAVAILABLE"
    assert "B24_APPROVAL" in refused.data["error"]["hint"]
    unasked = [line for line in _audit(state) if line["outcome"] == "declined"]
    assert [line["error"] for line in unasked] == ["APPROVAL_UNAVAILABLE"]
    assert _leads(portal, "no human here") == []
    assert "crm.lead.add" not in portal.stats()["by_method"]

    # The operator lowers the bar for plain writes: the agent's own call then suffices.
    allowed = _host(portal, tmp_path, state, mode=mode, env={"B24_APPROVAL": "destructive"})
    ran = allowed.session(work)
    assert not ran.error, ran.text
    assert len(_leads(portal, "no human here")) == 1


def test_a_plan_edited_on_disk_is_refused_before_anyone_is_asked(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    asked: list[str] = []
    host = _host(portal, tmp_path, state, elicit=answering("accept", asked=asked))
    plan = host.one("b24_plan", {"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}})
    (path,) = state.glob(f"*/plans/{plan.data['plan_id']}.json")
    stored = json.loads(path.read_text())
    stored["plan"]["params"]["fields"]["TITLE"] = "edited"
    path.write_text(json.dumps(stored))
    refused = host.one("b24_execute_plan", {"plan_id": plan.data["plan_id"]})
    assert refused.error and refused.code == "PLAN_TAMPERED"
    assert asked == []
    assert _leads(portal, "edited") == [] and _leads(portal, "x") == []


def test_a_destructive_plan_shows_the_record_to_the_human(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "to be deleted"}}).json()["result"]
    asked: list[str] = []
    host = _host(portal, tmp_path, state, elicit=answering("accept", asked=asked))

    async def work(client: Any) -> Any:
        plan = await host.call(
            client, "b24_plan", {"method": "crm.lead.delete", "params": {"id": lead}}
        )
        assert not plan.error, plan.text
        return await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})

    ran = host.session(work)
    assert not ran.error, ran.text
    assert "destructive" in asked[0] and "to be deleted" in asked[0]
    assert _leads(portal, "to be deleted") == []


def test_the_human_reads_the_whole_plan_or_is_not_asked(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    """An agent hiding one harmful line behind 300 harmless ones (or behind a long param) gets it
    shown: nothing of a plan is cut from the question; a plan too long to show whole is refused
    when it is made (review8 M3: before, it was stored and refused only when run), so nobody is
    asked. A right-to-left override in a title reaches the human escaped."""
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "kept"}}).json()["result"]
    asked: list[str] = []
    host = _host(portal, tmp_path, state, elicit=answering("accept", asked=asked))
    harmless = [
        {"method": "crm.lead.add", "params": {"fields": {"TITLE": f"web form {n}"}}}
        for n in range(300)
    ]
    hidden = {"id": lead, "fields": {"TITLE": "HIJACKED\u202egpj.exe", "COMMENTS": "x" * 4100}}
    calls = [*harmless, {"method": "crm.lead.update", "params": hidden}]
    huge = {"fields": {"TITLE": "too long to read", "COMMENTS": "y" * 70_000}}

    async def work(client: Any) -> Any:
        bulk = await host.call(client, "b24_plan_batch", {"calls": calls})
        refused = await host.call(client, "b24_plan", {"method": "crm.lead.add", "params": huge})
        assert not bulk.error, bulk.text[:300]
        ran = await host.call(client, "b24_execute_plan", {"plan_id": bulk.data["plan_id"]})
        return ran, refused

    ran, refused = host.session(work)
    assert not ran.error, ran.text
    (shown,) = asked
    assert "HIJACKED\\u202egpj.exe" in shown and "\u202e" not in shown
    assert "x" * 4100 in shown and "web form 0" in shown and "web form 299" in shown
    assert refused.error and refused.code == "APPROVAL_TOO_LARGE", refused.text
    assert _leads(portal, "too long to read") == []


# --- reads at scale: exports, the size cap, concurrency ------------------------------------------


def test_an_oversized_list_answer_is_cut_to_whole_rows_with_a_marker(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    comment = "длинный комментарий " * 150  # 3,000 characters, 5,700 bytes: 50 rows ~285 KB
    cmd = {
        f"a{n}": f"crm.lead.add?fields[TITLE]=big{n}&fields[COMMENTS]={comment}" for n in range(50)
    }
    assert portal.rest("batch", {"cmd": cmd}).status_code == 200
    host = _host(portal, tmp_path, state)
    params = {"select": ["ID", "TITLE", "COMMENTS"], "order": {"ID": "ASC"}}
    cut = host.one("b24_call", {"method": "crm.lead.list", "params": params})
    assert not cut.error, cut.text[:300]
    assert len(cut.text.encode()) <= 60_000  # ~25,000 tokens at 2.4 bytes a token
    marker = cut.data["truncated"]
    shown = marker["rows_shown"]
    assert 0 < shown < 50 == marker["rows_in_answer"]
    assert len(cut.data["result"]) == shown and marker["next_start"] == shown
    assert all(row["COMMENTS"] == comment.strip() or row["COMMENTS"] for row in cut.data["result"])

    rest = host.one("b24_call", {"method": "crm.lead.list", "params": {**params, "start": shown}})
    assert rest.data["result"][0]["ID"] == str(int(cut.data["result"][-1]["ID"]) + 1)


@pytest.mark.slow
def test_an_export_of_100000_leads_writes_every_id_once(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    portal.admin("seed", {"crm.lead": 100_000})
    host = _host(portal, tmp_path, state)
    before = portal.stats()["requests"]
    done = host.one("b24_export", {"method": "crm.lead.list"})
    assert not done.error, done.text
    sent = portal.stats()["requests"] - before
    path = Path(done.data["path"])
    assert path.parent == state / path.parent.parent.name / "exports"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ids = [json.loads(line)["ID"] for line in path.read_text().splitlines()]
    assert done.data["rows"] == len(ids) == len(set(ids)) == 100_000
    assert done.data["requests"] == sent <= 45
    assert len(done.text) < 1000


def test_ten_concurrent_tool_calls_on_a_standard_plan_portal_are_never_rejected(
    start_sandbox: Any, tmp_path: Path, state: Path
) -> None:
    standard = start_sandbox("--plan", "standard")
    host = _host(standard, tmp_path, state)
    rounds = 6  # 10 x 6 = 60 calls: past the bucket of 50, so the limiter must pace them

    async def work(client: Any) -> list[Any]:
        results: list[Any] = []

        async def caller(n: int) -> None:
            for _ in range(rounds):
                params = {"select": ["ID"], "start": n}
                results.append(
                    await host.call(
                        client, "b24_call", {"method": "crm.lead.list", "params": params}
                    )
                )

        async with anyio.create_task_group() as group:
            for n in range(10):
                group.start_soon(caller, n)
        return results

    results = host.session(work)
    assert len(results) == 60 and not [r.text for r in results if r.error]
    stats = standard.stats()
    assert stats["rate_limit_rejections"] == 0 and stats["requests"] >= 60


def test_the_operator_ceiling_holds_over_mcp(portal: Sandbox, tmp_path: Path, state: Path) -> None:
    host = _host(portal, tmp_path, state, env={"B24_READ_ONLY": "1"})
    params = {"fields": {"TITLE": "read-only portal"}}
    refused = host.one("b24_plan", {"method": "crm.lead.add", "params": params})
    assert refused.error and refused.data["error"]["code"] == "READ_ONLY"
    assert "B24_READ_ONLY" in refused.text
    read = host.one("b24_call", {"method": "user.current"})
    assert not read.error, read.text


def test_a_list_of_updates_becomes_one_bulk_plan_the_human_sees_record_by_record(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    portal.admin("seed", {"crm.lead": 120})
    asked: list[str] = []
    host = _host(portal, tmp_path, state, elicit=answering("accept", asked=asked))
    calls = [
        {"method": "crm.lead.update", "params": {"id": n, "fields": {"TITLE": f"bulk {n}"}}}
        for n in range(1, 121)
    ]

    async def work(client: Any) -> Any:
        plan = await host.call(client, "b24_plan_batch", {"calls": calls})
        assert not plan.error, plan.text[:500]
        before = portal.stats()["requests"]
        ran = await host.call(client, "b24_execute_plan", {"plan_id": plan.data["plan_id"]})
        return plan, ran, portal.stats()["requests"] - before

    plan, ran, sent = host.session(work)
    assert len(plan.data["plan"]["previews"]) == 120
    assert not ran.error, ran.text[:500]
    assert ran.data["failed"] == 0 and len(ran.data["result"]) == 120
    assert sent == 3  # 120 updates, 50 to a batch request
    assert "120 calls" in asked[0] and "bulk 1" in asked[0]
    titles = portal.rest("crm.lead.list", {"filter": {"%TITLE": "bulk "}, "select": ["ID"]}).json()
    assert len(titles["result"]) == 50 and titles["total"] == 120


def test_the_export_folder_is_never_a_symbolic_link(tmp_path: Path) -> None:
    """A link planted where the operator's export folder should be is refused, and nothing is
    written where it points (state files and folders are not followed through links)."""
    from b24agent.errors import ConfigError
    from b24agent.mcp.exports import ExportFolder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "exports"
    link.symlink_to(elsewhere)
    with pytest.raises(ConfigError) as refused:
        ExportFolder(link)._ready()
    assert refused.value.code == "EXPORT_DIR_UNUSABLE" and "link" in refused.value.message
    assert list(elsewhere.iterdir()) == []


def test_an_export_whose_disk_is_full_is_a_local_failure_not_a_write_that_may_have_run(
    portal: Sandbox, tmp_path: Path, state: Path
) -> None:
    """Review7b L-f: b24_export's rows meet a full export disk. Old: LOCAL_IO_ERROR "after a
    write was sent ... may or may not have happened" from a tool that cannot write. New: the
    plain local failure, "no write was sent to the portal"."""
    portal.rest("crm.lead.add", {"fields": {"TITLE": "full-disk"}})
    disk = small_tmpfs(tmp_path / "exports", "64k")
    folder = next(disk)
    try:
        fill(folder)
        host = _host(portal, tmp_path, state, env={"B24_MCP_EXPORT_DIR": str(folder)})
        failed = host.one("b24_export", {"method": "crm.lead.list", "params": {}})
    finally:
        next(disk, None)  # unmounts
    error = failed.data["error"]
    print(f"\n{error['code']}: {error['message']} / {error['hint']}")
    assert failed.error and failed.code == "LOCAL_IO_ERROR"
    assert "no write was sent" in error["message"] and "may or may not" not in error["hint"]
