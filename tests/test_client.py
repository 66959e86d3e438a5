"""Bitrix24Client over the real sandbox: batch parsing, call_many chunking, and iter_all's fast
id-chained export (every row exactly once, 2,500 rows per request) with its offset fallback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import (
    ApiError,
    NotFoundError,
    OutcomeUnknownError,
    UsageError,
    ValidationError,
)
from b24agent.rest.batching import parse_batch, plan_batch
from b24agent.rest.results import CallResult
from client_support import client_for
from conftest import Sandbox
from hypothesis import given
from hypothesis import strategies as st


def requests_to(portal: Sandbox) -> int:
    return portal.stats()["requests"]


def ids(rows: list[dict[str, Any]], key: str = "ID") -> list[int]:
    return [int(row[key]) for row in rows]


# --- batch ---------------------------------------------------------------------------------


def test_batch_named_commands_all_succeed(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 3})
    client = client_for(portal, tmp_path)
    answer = client.batch(
        {
            "one": ("crm.lead.get", {"id": 1}),
            "list": ("crm.lead.list", {"filter": {"<=ID": 2}, "select": ["ID"]}),
            "user": ("user.current", {}),
        }
    )
    assert answer.errors == {}  # result_error arrived as [] (PHP's empty map)
    assert answer.results["one"]["ID"] == "1"
    assert ids(answer.results["list"]) == [1, 2]
    assert answer.totals == {"list": 2}
    assert set(answer.times) == {"one", "list", "user"}
    assert client.requests_sent == 1


def test_batch_numbered_commands_come_back_as_lists(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 2})
    client = client_for(portal, tmp_path)
    answer = client.batch([("crm.lead.get", {"id": 1}), ("crm.lead.get", {"id": 99})])
    assert answer.results["0"]["ID"] == "1"
    assert isinstance(answer.errors["1"], NotFoundError)
    assert answer.errors["1"].exit_code == 1


def test_batch_with_halt_marks_the_rest_not_run(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    answer = client.batch(
        {
            "bad": ("crm.lead.get", {"id": 999}),
            "add": ("crm.lead.add", {"fields": {"TITLE": "never"}}),
        },
        halt=True,
    )
    assert isinstance(answer.errors["bad"], NotFoundError)
    assert answer.errors["add"].code == "BATCH_HALTED" and answer.errors["add"].retryable
    assert client.call("crm.lead.list").result == []


def test_batch_limits_and_validation_before_sending(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(UsageError, match="at most 50"):
        client.batch([("user.current", {})] * 51)
    with pytest.raises(UsageError, match="batch cannot contain batch"):
        client.batch({"x": ("batch", {"cmd": {"a": "user.current"}})})
    with pytest.raises(ValidationError, match=r"batch command b: crm\.lead\.update"):
        client.batch({"a": ("user.current", {}), "b": ("crm.lead.update", {"id": 1})})
    assert client.requests_sent == 0


def test_batch_command_error_of_a_write_is_classified_as_a_write(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin(
        "faults", {"rules": [{"method": "crm.lead.add", "error": "INTERNAL_SERVER_ERROR"}]}
    )
    client = client_for(portal, tmp_path)
    answer = client.batch(
        {"read": ("crm.lead.list", {}), "write": ("crm.lead.add", {"fields": {"TITLE": "x"}})}
    )
    assert answer.results["read"] == []
    assert isinstance(answer.errors["write"], OutcomeUnknownError)


def test_raw_batch_call_books_and_returns_the_envelope(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    raw = client.call("batch", {"halt": 0, "cmd": {"a": "user.current", "b": "server.time"}})
    assert raw.result["result"]["a"]["ID"] == "1"
    assert raw.result["result_error"] == []


#: One command outcome as the portal may encode it.
outcomes = st.one_of(
    st.tuples(st.just("ok"), st.one_of(st.integers(), st.lists(st.integers(), max_size=3))),
    st.tuples(st.just("err"), st.sampled_from(["NOT_FOUND", "ERROR_CORE", "", "ACCESS_DENIED"])),
)


def php_encode(values: dict[str, Any]) -> Any:
    """PHP's json_encode of one per-command map: [] when empty, a list for keys 0..n-1."""
    if not values:
        return []
    if list(values) == [str(i) for i in range(len(values))]:
        return list(values.values())
    return values


@given(
    named=st.booleans(),
    results=st.lists(outcomes, min_size=1, max_size=50),
)
def test_parse_batch_reads_every_php_form(named: bool, results: list[tuple[str, Any]]) -> None:
    commands = [("crm.lead.get", {"id": i + 1}) for i in range(len(results))]
    plan = plan_batch({f"c{i}": c for i, c in enumerate(commands)} if named else commands)
    ok = {n: v for n, (kind, v) in zip(plan.names, results, strict=True) if kind == "ok"}
    bad = {
        n: {"error": v, "error_description": "Not found" if v == "" else "no"}
        for n, (kind, v) in zip(plan.names, results, strict=True)
        if kind == "err"
    }
    body = {
        "result": php_encode(ok),
        "result_error": php_encode(bad),
        "result_total": [],
        "result_next": [],
        "result_time": [],
    }
    call = CallResult(body, None, None, {}, {"result": body}, 200)
    answer = parse_batch(call, plan, halt=False, is_write=lambda m: False)
    assert answer.results == ok
    assert set(answer.errors) == set(bad)
    assert all(answer.errors[n].code == bad[n]["error"] for n in bad)
    assert all(isinstance(answer.errors[n], NotFoundError) for n in bad if bad[n]["error"] == "")


# --- call_many -------------------------------------------------------------------------------


def test_call_many_120_calls_in_3_requests_in_order(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 100})
    client = client_for(portal, tmp_path)
    before = requests_to(portal)
    seen: list[int] = []
    results = list(
        client.call_many([("crm.lead.get", {"id": i}) for i in range(1, 121)], progress=seen.append)
    )
    assert requests_to(portal) - before == 3 == client.requests_sent
    assert [r.index for r in results] == list(range(120))
    assert [int(r.result["ID"]) for r in results[:100]] == list(range(1, 101))
    assert all(isinstance(r.error, NotFoundError) for r in results[100:])
    assert seen == [50, 100, 120]


@pytest.mark.parametrize(
    ("parallel", "halt", "most_at_once"), [(1, False, 1), (4, False, 4), (4, True, 1)]
)
def test_call_many_parallel_sends_that_many_batches_at_once_in_input_order(
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    parallel: int,
    halt: bool,
    most_at_once: int,
) -> None:
    # A portal of its own: an export another test abandoned may still have a page in flight
    # on the shared one. 150 ms is long enough that concurrent sends overlap.
    portal = start_sandbox("--plan", "unlimited", "--latency-ms", "150")
    client = client_for(portal, tmp_path)
    adds = [("crm.lead.add", {"fields": {"TITLE": f"p{i}"}}) for i in range(400)]
    results = list(client.call_many(adds, parallel=parallel, halt=halt))
    stats = portal.stats()
    assert stats["requests"] == 8 and stats["max_in_flight"] == most_at_once
    assert [r.index for r in results] == list(range(400)) and all(r.ok for r in results)
    titles = {int(row["ID"]): row["TITLE"] for row in client.iter_all("crm.lead.list")}
    assert [titles[int(r.result)] for r in results] == [f"p{i}" for i in range(400)]


def test_call_many_params_checked_skips_only_the_schema_check(
    portal: Sandbox, tmp_path: Path
) -> None:
    client = client_for(portal, tmp_path)
    bad = [("crm.lead.add", {"fields": {"TITLE": "b", "PHONE": "+1"}})]  # PHONE must be a list
    [local] = client.call_many(bad)
    assert isinstance(local.error, ValidationError) and client.requests_sent == 0
    [sent] = client.call_many(bad, params_checked=True)  # the caller vouches: sent as it is
    assert client.requests_sent == 1 and sent.error is not None
    assert not isinstance(sent.error, ValidationError)
    [nested] = client.call_many([("batch", {"cmd": {}})], params_checked=True)
    assert isinstance(nested.error, UsageError) and client.requests_sent == 1


def test_call_many_refuses_parallel_below_one(portal: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="parallel"):
        list(client_for(portal, tmp_path).call_many([("user.current", {})], parallel=0))


def test_call_many_invalid_item_fails_alone(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    results = list(
        client.call_many(
            [
                ("crm.lead.add", {"fields": {"TITLE": "a"}}),
                ("crm.lead.add", {"fields": {"TITLE": "b", "PHONE": "+1"}}),
                ("crm.lead.add", {"fields": {"TITLE": "c"}}),
            ]
        )
    )
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, ValidationError)
    assert "PHONE" in results[1].error.message
    assert len(client.call("crm.lead.list").result) == 2


def test_call_many_write_chunk_lost_after_running_is_unknown_per_item(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin(
        "faults",
        {
            "rules": [
                {"method": "batch", "error": "INTERNAL_SERVER_ERROR", "after": True, "times": 1}
            ]
        },
    )
    client = client_for(portal, tmp_path)
    calls = [("crm.lead.add", {"fields": {"TITLE": f"lead {i}"}}) for i in range(60)]
    results = list(client.call_many(calls))
    assert all(isinstance(r.error, OutcomeUnknownError) for r in results[:50])
    assert all(r.ok for r in results[50:])
    assert client.requests_sent == 2  # the unknown chunk was not resent
    assert len(list(client.iter_all("crm.lead.list"))) == 60


def test_call_many_halt_stops_after_failing_chunk(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    calls = [("crm.lead.get", {"id": 1})] + [("user.current", {})] * 60
    results = list(client.call_many(calls, halt=True))
    assert len(results) == 50
    assert isinstance(results[0].error, NotFoundError)
    assert all(r.error is not None and r.error.code == "BATCH_HALTED" for r in results[1:])
    assert client.requests_sent == 1


# --- iter_all ------------------------------------------------------------------------------


def test_export_10000_leads_every_id_once_in_5_requests(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 10_000})
    client = client_for(portal, tmp_path)
    before = requests_to(portal)
    counts: list[int] = []
    rows = list(
        client.iter_all("crm.lead.list", {"select": ["ID", "TITLE"]}, progress=counts.append)
    )
    assert sorted(ids(rows)) == list(range(1, 10_001))
    assert len(set(ids(rows))) == len(rows)
    assert requests_to(portal) - before <= 10_000 // 2_500 + 1
    assert counts[-1] == 10_000


def test_export_keeps_the_callers_filter_and_start(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 400})
    client = client_for(portal, tmp_path)
    wanted = {"filter": {">ID": 57, "SOURCE_ID": "WEB"}, "select": ["ID", "SOURCE_ID"]}
    fast = list(client.iter_all("crm.lead.list", wanted))
    assert fast and all(int(r["ID"]) > 57 and r["SOURCE_ID"] == "WEB" for r in fast)
    # The same rows in another order (fetched by id, ordered locally).
    other = list(client.iter_all("crm.lead.list", {**wanted, "order": {"DATE_CREATE": "ASC"}}))
    assert sorted(ids(fast)) == sorted(ids(other))
    assert ids(fast) == sorted(ids(fast))


def test_export_crm_item_list_shape(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.deal": 130})
    client = client_for(portal, tmp_path)
    rows = list(client.iter_all("crm.item.list", {"entityTypeId": 2, "select": ["title"]}))
    assert sorted(ids(rows, "id")) == list(range(1, 131))
    assert client.requests_sent == 1


def test_export_tasks_task_list_shape(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"tasks.task": 120})
    client = client_for(portal, tmp_path)
    rows = list(client.iter_all("tasks.task.list", {"select": ["TITLE"]}))
    assert sorted(ids(rows, "id")) == list(range(1, 121))
    assert client.requests_sent == 1


def test_export_in_another_order_is_fetched_by_id(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 260})
    client = client_for(portal, tmp_path)
    rows = list(client.iter_all("crm.lead.list", {"order": {"ID": "DESC"}, "select": ["ID"]}))
    assert ids(rows) == list(range(260, 0, -1))
    assert client.requests_sent == 1  # one id-chained batch, then ordered here


def test_export_limit_and_empty(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    assert list(client.iter_all("crm.lead.list")) == []
    portal.admin("seed", {"crm.lead": 300})
    rows = list(client.iter_all("crm.lead.list", {"select": ["ID"]}, limit=120))
    assert ids(rows) == list(range(1, 121))
    assert client.requests_sent == 2


def test_export_user_get(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    rows = list(client.iter_all("user.get", {}))
    assert ids(rows) == sorted(set(ids(rows))) and rows


def test_export_of_a_method_that_is_not_a_list(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(UsageError, match="does not return a list"):
        list(client.iter_all("user.current"))


def test_export_surfaces_page_errors(portal: Sandbox, tmp_path: Path) -> None:
    portal.admin("faults", {"rules": [{"method": "crm.lead.list", "error": "ACCESS_DENIED"}]})
    client = client_for(portal, tmp_path)
    with pytest.raises(ApiError) as info:
        list(client.iter_all("crm.lead.list"))
    assert info.value.code == "ACCESS_DENIED"


def test_a_halted_batch_missing_a_command_before_the_failure_may_have_run(
    portal: Sandbox, tmp_path: Path
) -> None:
    """review7 L8: the portal runs a batch's commands in order (batch.md) and halt stops it at
    the first error, so a command before that one ran. An answer that drops it (a broken proxy,
    a truncated answer) made it "not run" (BATCH_HALTED, retryable): its idempotency line freed
    for a resend of a write that may have run. It is MALFORMED_RESPONSE now, outcome unknown
    (exit 7); only the commands after the failure are BATCH_HALTED."""
    answer = {
        "result": {
            "result": {},
            "result_error": {"bad": {"error": "NOT_FOUND", "error_description": "Not found"}},
            "result_total": [],
            "result_next": [],
            "result_time": [],
        },
        "time": {"start": 0, "finish": 0, "duration": 0, "processing": 0},
    }
    rule = {"method": "batch", "body": json.dumps(answer), "status": 200, "times": 1}
    portal.admin("faults", {"rules": [{**rule, "content_type": "application/json"}]})
    client = client_for(portal, tmp_path)
    got = client.batch(
        {
            "add": ("crm.lead.add", {"fields": {"TITLE": "ran, answer lost"}}),
            "bad": ("crm.lead.get", {"id": 999}),
            "later": ("crm.lead.add", {"fields": {"TITLE": "never"}}),
        },
        halt=True,
    )
    assert isinstance(got.errors["bad"], NotFoundError)
    assert got.errors["add"].code == "MALFORMED_RESPONSE", got.errors["add"]
    assert got.errors["add"].exit_code == 7 and not got.errors["add"].retryable
    assert got.errors["later"].code == "BATCH_HALTED" and got.errors["later"].retryable
