"""Conformance of the sandbox portal's core with protocol.md, over real HTTP.

Covers what every client depends on: addresses and auth, request encodings, the envelope, error
codes, the token server, both limiters, batch, REST 3.0 idempotency, fault injection, the admin
surface, exact stats under concurrency and resistance to malformed requests.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import SANDBOX_SCRIPT, Sandbox, fails, ok

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def oauth_post(portal: Sandbox, method: str, params: dict[str, Any] | None = None, **kw: Any):
    return portal.session.post(f"{portal.url}/rest/{method}", json=params or {}, timeout=30, **kw)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth(token: str) -> dict[str, str]:
    """The token the documented way: the ``auth`` parameter (here in the query string)."""
    return {"auth": token}


def refresh(portal: Sandbox, token: str, **override: str) -> requests.Response:
    query = {
        "grant_type": "refresh_token",
        "client_id": portal.oauth["client_id"],
        "client_secret": portal.oauth["client_secret"],
        "refresh_token": token,
        **override,
    }
    return portal.session.get(f"{portal.url}/oauth/token/", params=query, timeout=30)


def batch(portal: Sandbox, cmd: Any, halt: Any = 0) -> dict[str, Any]:
    return ok(portal.rest("batch", {"halt": halt, "cmd": cmd}))


def add_lead(portal: Sandbox, title: str, **fields: Any) -> int:
    return int(ok(portal.rest("crm.lead.add", {"fields": {"TITLE": title, **fields}})))


def lead_title(portal: Sandbox, lead_id: Any) -> str:
    return ok(portal.rest("crm.lead.get", {"id": lead_id}))["TITLE"]


# --- addresses, verbs, encodings --------------------------------------------------------------

OFFLINE = {"CODE": "rest_offline_extended"}


@pytest.mark.parametrize("http", ["post_json", "post_form", "get"])
def test_webhook_accepts_json_form_and_query(portal: Sandbox, http: str) -> None:
    assert ok(portal.rest("feature.get", OFFLINE, http=http)) == {"value": "Y"}
    assert ok(portal.rest("feature.get", {"CODE": "no_such_feature"}, http=http)) == {"value": "N"}


def test_multipart_body_with_bracket_keys(portal: Sandbox) -> None:
    response = portal.session.post(
        portal.webhook_url + "batch",
        files={
            "cmd[first]": (None, "feature.get?CODE=rest_offline_extended"),
            "cmd[second]": (None, "method.get?name=batch"),
            "attachment": ("note.txt", b"\x00\x01 binary is fine"),
        },
        timeout=30,
    )
    result = ok(response)["result"]
    assert result == {
        "first": {"value": "Y"},
        "second": {"isExisting": True, "isAvailable": True},
    }


def test_body_wins_over_query(portal: Sandbox) -> None:
    url = portal.webhook_url + "feature.get?CODE=no_such_feature"
    assert ok(portal.session.post(url, json=OFFLINE, timeout=30)) == {"value": "Y"}
    assert ok(portal.session.post(url, json={}, timeout=30)) == {"value": "N"}


@pytest.mark.parametrize(
    "name", ["feature.get.json", "FEATURE.Get", "feature.get/", "Feature.GET.JSON/"]
)
def test_method_name_suffix_slash_and_case(portal: Sandbox, name: str) -> None:
    assert ok(portal.session.post(portal.webhook_url + name, json=OFFLINE, timeout=30)) == {
        "value": "Y"
    }


def test_form_bracket_nesting_reaches_handler(portal: Sandbox) -> None:
    fields = {"TITLE": "Nested", "PHONE": [{"VALUE": "+100", "VALUE_TYPE": "WORK"}]}
    lead_id = ok(portal.rest("crm.lead.add", {"fields": fields}, http="post_form"))
    lead = ok(portal.rest("crm.lead.get", {"id": lead_id}, http="get"))
    assert lead["TITLE"] == "Nested"
    assert lead["PHONE"][0]["VALUE"] == "+100"
    assert lead["PHONE"][0]["VALUE_TYPE"] == "WORK"


# --- envelope -------------------------------------------------------------------------------


def test_envelope_time_block(portal: Sandbox) -> None:
    body = portal.rest("server.time").json()
    assert set(body) == {"result", "time"}
    assert ISO.match(body["result"])
    block = body["time"]
    for key in ("start", "finish", "duration", "processing"):
        assert isinstance(block[key], float)
    assert block["finish"] >= block["start"]
    assert block["duration"] == pytest.approx(block["finish"] - block["start"])
    assert ISO.match(block["date_start"]) and ISO.match(block["date_finish"])
    assert isinstance(block["operating"], (int, float))
    assert isinstance(block["operating_reset_at"], int)
    assert block["operating_reset_at"] > block["start"]


def test_list_envelope_has_total_and_next_only_while_rows_remain(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 60})
    first = portal.rest("crm.lead.list", {"order": {"ID": "ASC"}}).json()
    assert len(first["result"]) == 50
    assert first["total"] == 60 and first["next"] == 50
    last = portal.rest("crm.lead.list", {"order": {"ID": "ASC"}, "start": 50}).json()
    assert len(last["result"]) == 10 and last["total"] == 60
    assert "next" not in last


# --- auth errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("fake", ["user", "code"])
def test_wrong_webhook_credentials(portal: Sandbox, fake: str) -> None:
    user = "2" if fake == "user" else str(portal.webhook["user_id"])
    code = "x" * 32 if fake == "code" else portal.webhook["code"]
    response = portal.session.post(f"{portal.url}/rest/{user}/{code}/server.time", timeout=30)
    body = fails(response, 403, "INVALID_CREDENTIALS")
    assert portal.webhook["code"] not in json.dumps(body)


def test_oauth_address_without_token(portal: Sandbox) -> None:
    fails(oauth_post(portal, "server.time"), 401, "NO_AUTH_FOUND")


def test_oauth_unknown_token(portal: Sandbox) -> None:
    fails(oauth_post(portal, "server.time", params=auth("nope")), 401, "invalid_token")


@pytest.mark.parametrize("where", ["header", "query_auth", "body_auth", "body_access_token"])
def test_oauth_token_places(portal: Sandbox, where: str) -> None:
    token = portal.oauth["access_token"]
    url = f"{portal.url}/rest/app.info"
    if where == "header":
        portal.admin("settings", {"bearer_header": True})
        response = portal.session.post(url, headers=bearer(token), timeout=30)
    elif where == "query_auth":
        response = portal.session.get(url, params={"auth": token}, timeout=30)
    elif where == "body_auth":
        response = portal.session.post(url, json={"auth": token}, timeout=30)
    else:
        response = portal.session.post(url, data={"access_token": token}, timeout=30)
    info = ok(response)
    assert info["CODE"] == portal.oauth["client_id"] and info["INSTALLED"] is True


def test_bearer_header_is_checked_before_params(portal: Sandbox) -> None:
    portal.admin("settings", {"bearer_header": True})
    response = oauth_post(
        portal, "server.time", {"auth": portal.oauth["access_token"]}, headers=bearer("bad")
    )
    fails(response, 401, "invalid_token")


def test_bearer_header_ignored_when_the_setting_is_off(portal: Sandbox) -> None:
    """The suite's sandboxes read no header: a client that only sends Bearer gets nowhere."""
    token = portal.oauth["access_token"]
    fails(oauth_post(portal, "server.time", headers=bearer(token)), 401, "NO_AUTH_FOUND")
    assert ok(oauth_post(portal, "server.time", {"auth": token}))


def test_unknown_method_is_404(portal: Sandbox) -> None:
    fails(portal.rest("no.such.method"), 404, "ERROR_METHOD_NOT_FOUND")
    fails(
        oauth_post(portal, "no.such.method", params=auth(portal.oauth["access_token"])),
        404,
        "ERROR_METHOD_NOT_FOUND",
    )


def test_insufficient_scope(portal: Sandbox) -> None:
    portal.admin("settings", {"webhook_scopes": ["user"]})
    fails(portal.rest("crm.lead.list"), 403, "insufficient_scope")
    assert ok(portal.rest("scope")) == ["user"]
    assert ok(portal.rest("method.get", {"name": "crm.lead.list"})) == {
        "isExisting": True,
        "isAvailable": False,
    }
    assert ok(portal.rest("server.time"))  # basic scope is never checked
    portal.admin("settings", {"webhook_scopes": ["crm"]})
    assert isinstance(ok(portal.rest("crm.lead.list")), list)


def test_app_only_method_refuses_webhook(portal: Sandbox) -> None:
    fails(portal.rest("event.get"), 403, "WRONG_AUTH_TYPE")
    response = oauth_post(portal, "event.get", params=auth(portal.oauth["access_token"]))
    assert isinstance(ok(response), list)


def test_app_info_webhook_shape(portal: Sandbox) -> None:
    info = ok(portal.rest("app.info"))
    assert set(info) == {"SCOPE", "LICENSE"}
    assert "crm" in info["SCOPE"]


def test_feature_get_needs_code(portal: Sandbox) -> None:
    fails(portal.rest("feature.get"), 400, "CODE_EMPTY")


def test_methods_and_full_scope(portal: Sandbox) -> None:
    names = ok(portal.rest("methods"))
    assert "batch" in names and "crm.lead.add" in names
    assert "event.bind" not in names  # app-only: not callable with this webhook
    assert "event.bind" in ok(portal.rest("methods", {"full": "true"}))
    assert set(ok(portal.rest("methods", {"scope": ""}))) >= {"batch", "server.time"}
    assert set(ok(portal.rest("scope", {"full": True}))) >= {"crm", "task", "user"}


# --- token server -----------------------------------------------------------------------------


def test_refresh_rotates_strictly(portal: Sandbox) -> None:
    first = refresh(portal, portal.oauth["refresh_token"])
    assert first.status_code == 200, first.text
    grant = first.json()
    assert grant["refresh_token"] != portal.oauth["refresh_token"]
    assert grant["expires_in"] == 3600
    assert grant["expires"] >= int(time.time()) + 3590
    assert grant["member_id"] == portal.oauth["member_id"]
    assert grant["client_endpoint"] == f"{portal.url}/rest/"
    assert grant["user_id"] == 1
    for key in ("scope", "domain", "server_endpoint", "status"):
        assert key in grant
    assert ok(oauth_post(portal, "server.time", params=auth(grant["access_token"])))

    again = refresh(portal, portal.oauth["refresh_token"])
    fails(again, 400, "invalid_grant")
    assert refresh(portal, grant["refresh_token"]).status_code == 200
    stats = portal.stats()
    assert stats["token_refreshes"] == 2 and stats["failed_refreshes"] == 1


def test_refresh_by_post_form(portal: Sandbox) -> None:
    response = portal.session.post(
        f"{portal.url}/oauth/token/",
        data={
            "grant_type": "refresh_token",
            "client_id": portal.oauth["client_id"],
            "client_secret": portal.oauth["client_secret"],
            "refresh_token": portal.oauth["refresh_token"],
        },
        timeout=30,
    )
    assert response.status_code == 200 and "access_token" in response.json()


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"client_secret": "wrong"}, "invalid_client"),
        ({"client_id": "local.other"}, "invalid_client"),
        ({"grant_type": "password"}, "invalid_request"),
        ({"refresh_token": "unknown"}, "invalid_grant"),
    ],
)
def test_refresh_errors(portal: Sandbox, override: dict[str, str], code: str) -> None:
    body = fails(refresh(portal, portal.oauth["refresh_token"], **override), 400, code)
    assert set(body) == {"error", "error_description"}
    assert portal.oauth["client_secret"] not in json.dumps(body)


def test_wrong_client_does_not_spend_refresh_token(portal: Sandbox) -> None:
    fails(refresh(portal, portal.oauth["refresh_token"], client_secret="x"), 400, "invalid_client")
    assert refresh(portal, portal.oauth["refresh_token"]).status_code == 200


def test_expired_token_then_refresh(portal: Sandbox) -> None:
    token = portal.oauth["access_token"]
    assert ok(oauth_post(portal, "server.time", params=auth(token)))
    assert portal.admin("expire-tokens")["expired"] >= 1
    fails(oauth_post(portal, "server.time", params=auth(token)), 401, "expired_token")
    fails(oauth_post(portal, "server.time", {"auth": token}), 401, "expired_token")
    fresh = refresh(portal, portal.oauth["refresh_token"]).json()["access_token"]
    assert ok(oauth_post(portal, "server.time", params=auth(fresh)))
    # an older token stays "expired", not "invalid", after other refreshes
    fails(oauth_post(portal, "server.time", params=auth(token)), 401, "expired_token")


def test_token_lifetime_setting(portal: Sandbox) -> None:
    portal.admin("settings", {"token_lifetime_s": 0})
    grant = refresh(portal, portal.oauth["refresh_token"]).json()
    assert grant["expires_in"] == 0
    fails(
        oauth_post(portal, "server.time", params=auth(grant["access_token"])),
        401,
        "expired_token",
    )


def test_oauth_user_setting_applies_to_current_tokens(portal: Sandbox) -> None:
    token = portal.oauth["access_token"]
    portal.admin("settings", {"oauth_user_id": 2})
    assert ok(oauth_post(portal, "user.current", params=auth(token)))["ID"] == "2"
    assert refresh(portal, portal.oauth["refresh_token"]).json()["user_id"] == 2
    assert ok(portal.rest("user.current"))["ID"] == "1"  # the webhook's user is fixed


def test_reset_restores_start_tokens(portal: Sandbox) -> None:
    assert refresh(portal, portal.oauth["refresh_token"]).status_code == 200
    portal.admin("expire-tokens")
    portal.admin("reset")
    assert ok(oauth_post(portal, "server.time", params=auth(portal.oauth["access_token"])))
    assert refresh(portal, portal.oauth["refresh_token"]).status_code == 200


# --- limits -----------------------------------------------------------------------------------


def test_leaky_bucket_rejects_burst_without_running_it(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "standard")
    answers = [sandbox.rest("crm.lead.add", {"fields": {"TITLE": f"b{i}"}}) for i in range(80)]
    codes = [answer.status_code for answer in answers]
    assert codes[:50] == [200] * 50
    rejected = [answer for answer in answers if answer.status_code == 503]
    assert len(rejected) >= 10 and set(codes) == {200, 503}
    assert {answer.json()["error"] for answer in rejected} == {"QUERY_LIMIT_EXCEEDED"}
    stats = sandbox.stats()
    assert stats["rate_limit_rejections"] == len(rejected) and stats["requests"] == 80
    sandbox.admin("settings", {"plan": "unlimited"})
    listed = sandbox.rest("crm.lead.list", {"select": ["ID"]}).json()
    assert listed["total"] == codes.count(200)


def test_batch_counts_once_in_bucket_and_stats(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "standard")
    cmd = {f"c{i}": "server.time" for i in range(50)}
    for _ in range(50):
        assert len(batch(sandbox, cmd)["result"]) == 50
    fails(sandbox.rest("batch", {"cmd": cmd}), 503, "QUERY_LIMIT_EXCEEDED")
    stats = sandbox.stats()
    assert stats["requests"] == 51 and stats["by_method"] == {"batch": 51}


def test_enterprise_plan_capacity(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "enterprise")
    codes = [sandbox.rest("server.time").status_code for _ in range(300)]
    assert codes[:250] == [200] * 250 and 503 in codes[250:]


def test_operating_time_limit(portal: Sandbox) -> None:
    portal.admin("settings", {"method_cost_ms": {"server.*": 100_000}, "operating_budget_s": 480})
    seen = []
    for _ in range(5):
        seen.append(portal.rest("server.time").json()["time"]["operating"])
    assert seen == [100, 200, 300, 400, 500]
    body = fails(portal.rest("server.time"), 429, "OPERATION_TIME_LIMIT")
    assert "operating_reset_at" not in body  # limits.md: the refusal carries no reset time
    portal.admin("settings", {"reset_at_in_limit_error": True})
    body = fails(portal.rest("server.time"), 429, "OPERATION_TIME_LIMIT")
    assert body["operating_reset_at"] > time.time() + 500
    assert portal.stats()["operating_limit_rejections"] == 2
    assert ok(portal.rest("feature.get", OFFLINE))  # other methods keep working
    # the budget is per credential: the OAuth app still has its own
    assert ok(oauth_post(portal, "server.time", params=auth(portal.oauth["access_token"])))


def test_operating_time_counts_batch_commands_not_batch(portal: Sandbox) -> None:
    portal.admin("settings", {"method_cost_ms": {"server.time": 200_000}})
    answer = batch(portal, {"a": "server.time", "b": "server.time", "c": "server.time"})
    assert [answer["result_time"][k]["operating"] for k in "abc"] == [200, 400, 600]
    fails(portal.rest("server.time"), 429, "OPERATION_TIME_LIMIT")
    blocked = batch(portal, {"d": "server.time", "e": "scope"})
    assert blocked["result_error"]["d"]["error"] == "OPERATION_TIME_LIMIT"
    assert "e" in blocked["result"]


def test_fast_calls_are_not_counted(portal: Sandbox) -> None:
    portal.admin("settings", {"method_cost_ms": {"server.time": 99}})
    for _ in range(3):
        assert portal.rest("server.time").json()["time"]["operating"] == 0


# --- batch ------------------------------------------------------------------------------------


def test_batch_length_limit(portal: Sandbox) -> None:
    answer = batch(portal, [f"feature.get?CODE=f{i}" for i in range(52)])
    assert isinstance(answer["result"], list) and len(answer["result"]) == 50
    errors = answer["result_error"]
    assert set(errors) == {"50", "51"}
    assert errors["50"]["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"


def test_batch_list_commands_give_lists_and_empty_maps_are_arrays(portal: Sandbox) -> None:
    answer = batch(portal, ["server.time", "feature.get?CODE=rest_offline_extended"])
    assert isinstance(answer["result"], list) and answer["result"][1] == {"value": "Y"}
    assert answer["result_error"] == [] and answer["result_total"] == []
    assert answer["result_next"] == []
    assert isinstance(answer["result_time"], list) and len(answer["result_time"]) == 2
    all_failed = batch(portal, {"x": "no.such", "y": "feature.get"})
    assert all_failed["result"] == [] and set(all_failed["result_error"]) == {"x", "y"}


def test_batch_per_command_errors_and_nested_batch(portal: Sandbox) -> None:
    answer = batch(
        portal,
        {
            "ok": "server.time",
            "nested": "batch?cmd[a]=server.time",
            "unknown": "no.such.method",
            "bad": "feature.get",
        },
    )
    errors = answer["result_error"]
    assert errors["nested"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    assert errors["unknown"]["error"] == "ERROR_METHOD_NOT_FOUND"
    assert errors["bad"] == {"error": "CODE_EMPTY", "error_description": "CODE can't be empty"}
    assert list(answer["result"]) == ["ok"]


@pytest.mark.parametrize(
    ("halt", "stops"),
    [
        (0, False),
        ("0", False),
        ("", False),
        (1, True),
        ("1", True),
        ("false", True),
        (True, True),
        ("Y", True),
    ],
)
def test_batch_halt_truthiness(portal: Sandbox, halt: Any, stops: bool) -> None:
    cmd = {"a": "server.time", "b": "feature.get", "c": "server.time"}
    answer = batch(portal, cmd, halt=halt)
    assert "b" in answer["result_error"]
    if stops:
        assert list(answer["result"]) == ["a"]
        assert "c" not in answer["result_time"] and "c" not in answer["result_error"]
    else:
        assert list(answer["result"]) == ["a", "c"]


def test_batch_halt_in_form_body(portal: Sandbox) -> None:
    params = {"halt": "false", "cmd": {"a": "feature.get", "b": "server.time"}}
    answer = ok(portal.rest("batch", params, http="post_form"))
    assert answer["result"] == [] and list(answer["result_error"]) == ["a"]


def test_batch_typed_and_embedded_references(portal: Sandbox) -> None:
    cmd = {
        "new": "crm.lead.add?fields[TITLE]=First",
        "get": "crm.lead.get?id=$result[new]",
        "copy": "crm.lead.add?fields[TITLE]=Copy of $result[get][TITLE] #$result[new]",
        "feat": "feature.get?CODE=rest_offline_extended",
        "whole": "feature.get?CODE=$result[feat]",
        "inside": "feature.get?CODE=x$result[feat]",
        "missing": "crm.lead.add?fields[TITLE]=$result[nope][ID]",
    }
    answer = batch(portal, cmd)
    new_id = answer["result"]["new"]
    assert answer["result"]["get"]["ID"] == str(new_id)
    assert lead_title(portal, answer["result"]["copy"]) == f"Copy of First #{new_id}"
    # a whole reference keeps its type (a map is no CODE); inside text a map stays literal
    assert answer["result_error"]["whole"]["error"] == "CODE_EMPTY"
    assert answer["result"]["inside"] == {"value": "N"}
    assert lead_title(portal, answer["result"]["missing"]) == "$result[nope][ID]"


def test_batch_next_total_and_chained_export(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 120})
    cmd = {
        "p0": "crm.lead.list?order[ID]=ASC&select[]=ID",
        "p1": "crm.lead.list?order[ID]=ASC&select[]=ID&start=$next[p0]",
        "p2": "crm.lead.list?order[ID]=ASC&select[]=ID&start=$next[p1]",
        "fast": "crm.lead.list?order[ID]=ASC&select[]=ID&start=-1&filter[>ID]=$result[p0][49][ID]",
    }
    answer = batch(portal, cmd)
    assert answer["result_total"] == {"p0": 120, "p1": 120, "p2": 120, "fast": 0}
    assert answer["result_next"] == {"p0": 50, "p1": 100}  # no key for commands on last page
    assert len(answer["result"]["p2"]) == 20
    assert answer["result"]["fast"] == answer["result"]["p1"]


def test_batch_through_oauth_keeps_app_auth(portal: Sandbox) -> None:
    token = portal.oauth["access_token"]
    response = oauth_post(
        portal, "batch", {"cmd": {"e": "event.get", "i": "app.info"}, **auth(token)}
    )
    answer = ok(response)
    assert answer["result_error"] == []
    assert answer["result"]["i"]["CODE"] == portal.oauth["client_id"]


# --- REST 3.0 ---------------------------------------------------------------------------------


def v3(portal: Sandbox, method: str, payload: Any, key: str | None = None) -> requests.Response:
    url = f"{portal.url}/rest/api/{portal.webhook['user_id']}/{portal.webhook['code']}/{method}"
    headers = {"Idempotency-Key": key} if key is not None else {}
    return portal.session.post(url, json=payload, headers=headers, timeout=30)


TASK = {"fields": {"title": "Prepare report", "responsibleId": 1, "creatorId": 1}}


def test_v3_form_body_is_invalid_json(portal: Sandbox) -> None:
    url = f"{portal.webhook_url.replace('/rest/', '/rest/api/')}tasks.task.add"
    response = portal.session.post(url, data={"fields[title]": "x"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION"
    broken = portal.session.post(
        url, data=b"{not json", timeout=30, headers={"Content-Type": "application/json"}
    )
    assert broken.json()["error"]["code"] == "BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION"


def test_v3_ignores_query_string(portal: Sandbox) -> None:
    url = f"{portal.webhook_url.replace('/rest/', '/rest/api/')}tasks.task.get?id=1"
    response = portal.session.get(url, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"].startswith("BITRIX_REST_V3_EXCEPTION_")


def test_v3_idempotency_key_replay_and_reuse(portal: Sandbox) -> None:
    first = v3(portal, "tasks.task.add", TASK, key="order-42")
    assert first.status_code == 200, first.text
    assert first.headers["Idempotency-Key"] == "order-42"
    assert "Idempotent-Replayed" not in first.headers
    replay = v3(portal, "tasks.task.add", TASK, key="order-42")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    task_id = first.json()["result"]["item"]["id"]
    listed = ok(portal.rest("tasks.task.list", {"select": ["ID"]}))["tasks"]
    assert [int(t["id"]) for t in listed] == [task_id]

    other = v3(portal, "tasks.task.add", {"fields": {**TASK["fields"], "title": "B"}}, "order-42")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "BITRIX_REST_V3_EXCEPTION_IDEMPOTENCYKEYREUSEDEXCEPTION"
    fresh = v3(portal, "tasks.task.add", TASK, key="order-43")
    assert fresh.json()["result"]["item"]["id"] != task_id


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there"])
def test_v3_invalid_idempotency_key(portal: Sandbox, key: str) -> None:
    response = v3(portal, "tasks.task.add", TASK, key=key.encode("utf-8").decode("latin-1"))
    assert response.status_code == 400
    code = response.json()["error"]["code"]
    assert code == "BITRIX_REST_V3_EXCEPTION_INVALIDIDEMPOTENCYKEYEXCEPTION"


def test_v3_failed_call_is_not_stored(portal: Sandbox) -> None:
    portal.admin("faults", {"rules": [{"method": "tasks.task.add", "times": 1}]})
    assert v3(portal, "tasks.task.add", TASK, key="k1").status_code == 500
    second = v3(portal, "tasks.task.add", TASK, key="k1")
    assert second.status_code == 200 and "Idempotent-Replayed" not in second.headers


def test_v3_scope_error_shape(portal: Sandbox) -> None:
    portal.admin("settings", {"webhook_scopes": ["crm"]})
    response = v3(portal, "tasks.task.add", TASK)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION"
    assert error["message"]


def test_v2_ignores_idempotency_key(portal: Sandbox) -> None:
    url = portal.webhook_url + "crm.lead.add"
    payload = {"fields": {"TITLE": "twice"}}
    ids = [
        ok(portal.session.post(url, json=payload, headers={"Idempotency-Key": "k"}, timeout=30))
        for _ in range(2)
    ]
    assert ids[0] != ids[1]


# --- faults -----------------------------------------------------------------------------------


def test_fault_times(portal: Sandbox) -> None:
    portal.admin("faults", {"rules": [{"method": "crm.lead.*", "times": 2}]})
    for _ in range(2):
        fails(portal.rest("crm.lead.list"), 500, "INTERNAL_SERVER_ERROR")
    assert isinstance(ok(portal.rest("crm.lead.list")), list)
    assert ok(portal.rest("server.time"))


def test_fault_rate(portal: Sandbox) -> None:
    portal.admin("faults", {"rules": [{"method": "server.time", "rate": 0.5}], "seed": 3})
    codes = [portal.rest("server.time").status_code for _ in range(60)]
    assert set(codes) == {200, 500}
    portal.admin("faults", {"rules": [{"method": "server.time", "rate": 0}]})
    assert {portal.rest("server.time").status_code for _ in range(10)} == {200}


def test_fault_after_runs_the_write(portal: Sandbox) -> None:
    portal.admin(
        "faults",
        {
            "rules": [
                {
                    "method": "crm.lead.add",
                    "after": True,
                    "times": 1,
                    "error": "GATEWAY",
                    "status": 504,
                }
            ]
        },
    )
    fails(portal.rest("crm.lead.add", {"fields": {"TITLE": "ghost"}}), 504, "GATEWAY")
    leads = ok(portal.rest("crm.lead.list", {"select": ["ID", "TITLE"]}))
    assert [lead["TITLE"] for lead in leads] == ["ghost"]


@pytest.mark.parametrize("raw", ["<html><body>502 Bad Gateway</body></html>", '{"result": [1, 2'])
def test_fault_raw_body(portal: Sandbox, raw: str) -> None:
    portal.admin("faults", {"rules": [{"method": "server.time", "body": raw, "status": 502}]})
    response = portal.rest("server.time")
    assert response.status_code == 502 and response.text == raw
    with pytest.raises(ValueError):
        response.json()


def test_fault_inside_batch_and_on_token_server(portal: Sandbox) -> None:
    portal.admin(
        "faults",
        {
            "rules": [
                {"method": "feature.get", "error": "ERROR_CORE", "status": 400},
                {
                    "method": "oauth.token",
                    "times": 1,
                    "status": 503,
                    "error": "SERVICE_UNAVAILABLE",
                },
            ]
        },
    )
    answer = batch(portal, {"a": "feature.get?CODE=x", "b": "server.time"})
    assert answer["result_error"]["a"]["error"] == "ERROR_CORE" and "b" in answer["result"]
    fails(refresh(portal, portal.oauth["refresh_token"]), 503, "SERVICE_UNAVAILABLE")
    assert refresh(portal, portal.oauth["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    "rules",
    [
        [{"error": "X"}],
        [{"method": "a", "times": 1, "rate": 0.5}],
        [{"method": "a", "rate": 2}],
        [{"method": "a", "status": 42}],
        [{"method": "a", "surprise": 1}],
        "not a list",
    ],
)
def test_bad_fault_rules_are_refused_whole(portal: Sandbox, rules: Any) -> None:
    portal.admin("faults", {"rules": [{"method": "server.time"}]})
    response = portal.session.post(
        f"{portal.url}/_sandbox/faults",
        json={"rules": [{"method": "scope"}, *rules] if isinstance(rules, list) else rules},
        headers={"X-Sandbox-Admin": portal.admin_token},
        timeout=30,
    )
    fails(response, 400, "ERROR_ARGUMENT")
    fails(portal.rest("server.time"), 500, "INTERNAL_SERVER_ERROR")  # old rules kept
    assert ok(portal.rest("scope"))


# --- admin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "wrong"])
def test_admin_needs_token(portal: Sandbox, header: str | None) -> None:
    headers = {} if header is None else {"X-Sandbox-Admin": header}
    for verb, op in (("GET", "stats"), ("POST", "reset"), ("POST", "settings")):
        response = portal.session.request(
            verb,
            f"{portal.url}/_sandbox/{op}",
            headers=headers,
            json={"plan": "standard"},
            timeout=30,
        )
        fails(response, 403, "ACCESS_DENIED")
    assert portal.admin("settings")["plan"] == "unlimited"


def test_admin_settings_validation_and_reset(portal: Sandbox) -> None:
    response = portal.session.post(
        f"{portal.url}/_sandbox/settings",
        json={"plan": "platinum"},
        headers={"X-Sandbox-Admin": portal.admin_token},
        timeout=30,
    )
    fails(response, 400, "ERROR_ARGUMENT")
    changed = portal.admin("settings", {"plan": "enterprise", "features": []})
    assert changed["plan"] == "enterprise" and changed["features"] == []
    assert ok(portal.rest("feature.get", OFFLINE)) == {"value": "N"}
    assert ok(portal.rest("app.info"))["LICENSE"] == "en_ent250"
    portal.admin("reset")
    assert portal.admin("settings")["plan"] == "unlimited"
    assert ok(portal.rest("feature.get", OFFLINE)) == {"value": "Y"}


def test_admin_unknown_op_and_admin_calls_not_counted(portal: Sandbox) -> None:
    response = portal.session.get(
        f"{portal.url}/_sandbox/nope", headers={"X-Sandbox-Admin": portal.admin_token}, timeout=30
    )
    fails(response, 404, "ERROR_METHOD_NOT_FOUND")
    portal.admin("settings")
    assert portal.stats() == {
        "requests": 0,
        "by_method": {},
        "rate_limit_rejections": 0,
        "operating_limit_rejections": 0,
        "token_refreshes": 0,
        "failed_refreshes": 0,
        "max_in_flight": 0,
        "http_rejections": 0,
        "command_refusals": 0,
        "redirects": 0,
    }


def test_reset_clears_data_and_counters(portal: Sandbox) -> None:
    add_lead(portal, "before reset")
    portal.admin("faults", {"rules": [{"method": "scope"}]})
    portal.admin("reset")
    assert ok(portal.rest("crm.lead.list")) == []
    assert ok(portal.rest("scope"))
    assert portal.stats()["requests"] == 2


# --- concurrency ------------------------------------------------------------------------------


def test_stats_exact_under_200_threads(portal: Sandbox) -> None:
    url = portal.webhook_url

    def worker(n: int) -> list[int]:
        with requests.Session() as session:
            codes = [session.post(url + "server.time", timeout=60).status_code for _ in range(4)]
            codes.append(
                session.post(
                    url + "crm.lead.add", json={"fields": {"TITLE": f"t{n}"}}, timeout=60
                ).status_code
            )
        return codes

    with ThreadPoolExecutor(max_workers=200) as pool:
        codes = [c for batch_codes in pool.map(worker, range(200)) for c in batch_codes]
    assert codes == [200] * 1000
    stats = portal.stats()
    assert stats["requests"] == 1000
    assert stats["by_method"] == {"server.time": 800, "crm.lead.add": 200}
    assert portal.rest("crm.lead.list").json()["total"] == 200


# --- malformed requests -----------------------------------------------------------------------


def raw_request(portal: Sandbox, data: bytes, half_close: bool = False) -> bytes:
    """Send bytes on a fresh socket and read until the server closes the connection."""
    parts = urlsplit(portal.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"fields": {"TITLE": "x"'),
        ("application/json", b'{"fields": {"TITLE": "\xff\xfe"}}'),
        ("application/json", b'["fields"]'),
        ("application/json", b"[" * 100_000),
        ("application/x-www-form-urlencoded", b"fields%5BTITLE%5D=%ff%fe"),
        ("application/x-www-form-urlencoded", b"fields[TITLE]=\xff"),
        ("multipart/form-data", b"no boundary here"),
    ],
)
def test_malformed_bodies_get_clean_400(portal: Sandbox, content_type: str, body: bytes) -> None:
    response = portal.session.post(
        portal.webhook_url + "crm.lead.add",
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    fails(response, 400, "ERROR_ARGUMENT")
    assert ok(portal.rest("crm.lead.list")) == []


def test_bad_utf8_in_query(portal: Sandbox) -> None:
    fails(
        portal.session.get(portal.webhook_url + "feature.get?CODE=%ff", timeout=30),
        400,
        "ERROR_ARGUMENT",
    )


def test_huge_body_refused_before_reading(portal: Sandbox) -> None:
    path = urlsplit(portal.webhook_url).path + "crm.lead.add"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10**10}\r\n\r\n"
    ).encode()
    answer = raw_request(portal, head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"ERROR_ARGUMENT" in answer
    assert ok(portal.rest("server.time"))


def test_truncated_body_and_chunked_body(portal: Sandbox) -> None:
    path = urlsplit(portal.webhook_url).path + "crm.lead.add"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 500\r\n\r\n"
    ).encode()
    answer = raw_request(portal, head + b'{"fields": {"TITLE": "cut', half_close=True)
    assert answer.startswith(b"HTTP/1.1 400")
    assert ok(portal.rest("crm.lead.list")) == []

    body = json.dumps({"fields": {"TITLE": "chunked"}}).encode()
    chunked = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunked += (
        b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:10], body[10:]))
        + b"0\r\n\r\n"
    )
    answer = raw_request(portal, chunked, half_close=True)
    assert answer.startswith(b"HTTP/1.1 200")
    assert [lead["TITLE"] for lead in ok(portal.rest("crm.lead.list"))] == ["chunked"]


def test_expect_100_continue_is_answered_before_the_body(portal: Sandbox) -> None:
    path = urlsplit(portal.webhook_url).path + "crm.lead.add"
    body = json.dumps({"fields": {"TITLE": "expect"}}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    parts = urlsplit(portal.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert [lead["TITLE"] for lead in ok(portal.rest("crm.lead.list"))] == ["expect"]


def test_garbage_paths(portal: Sandbox) -> None:
    fails(portal.session.get(f"{portal.url}/rest/", timeout=30), 404, "ERROR_METHOD_NOT_FOUND")
    fails(
        portal.session.get(f"{portal.url}/rest/1/{portal.webhook['code']}/", timeout=30),
        404,
        "ERROR_METHOD_NOT_FOUND",
    )
    assert portal.session.get(f"{portal.url}/elsewhere", timeout=30).status_code == 404
    assert portal.session.put(portal.webhook_url + "server.time", timeout=30).status_code == 501
    assert ok(portal.rest("server.time"))


# --- process --------------------------------------------------------------------------------


def test_latency_option(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "unlimited", "--latency-ms", "150")
    started = time.monotonic()
    assert ok(sandbox.rest("server.time"))
    assert time.monotonic() - started >= 0.15


def test_cli_refuses_remote_host_and_stops_cleanly_on_sigterm(start_sandbox) -> None:
    refused = subprocess.run(
        [sys.executable, str(SANDBOX_SCRIPT), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "non-loopback" in refused.stderr
    assert refused.stdout == ""
    sandbox = start_sandbox()
    assert ok(sandbox.rest("server.time"))
    sandbox.process.terminate()
    assert sandbox.process.wait(timeout=15) == 0


# --- REST 3.0 batch, paging from page 0, documentation and scopes (rest-v3.md) ----------------


def test_v3_batch_is_a_json_array_answered_in_order(portal: Sandbox) -> None:
    first = ok(v3(portal, "tasks.task.add", TASK))["item"]["id"]
    calls = [
        {"method": "tasks.task.get", "query": {"id": first, "select": ["id", "title"]}},
        {"method": "tasks.task.add", "query": TASK, "as": "second"},
    ]
    result = ok(v3(portal, "batch", calls))
    assert result[0] == {"item": {"id": first, "title": "Prepare report"}}
    assert result[1]["item"]["id"] == first + 1
    # the v2 form with cmd strings does not work on REST 3.0
    old_form = v3(portal, "batch", {"cmd": {"a": "tasks.task.get?id=1"}})
    fails(old_form, 400, "BITRIX_REST_V3_EXCEPTION_INVALIDSELECTEXCEPTION")
    # all or nothing on the wire: a failing call fails the request with its own error
    missing = [{"method": "tasks.task.get", "query": {"id": 999}}]
    fails(v3(portal, "batch", missing), 400, "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION")


def test_v3_pagination_page_zero_means_offset(portal: Sandbox) -> None:
    ids = [ok(v3(portal, "tasks.task.add", TASK))["item"]["id"] for _ in range(3)]
    listed = v3(portal, "tasks.task.list", {"pagination": {"page": 0, "limit": 2, "offset": 1}})
    assert [i["id"] for i in ok(listed)["items"]] == ids[1:]
    negative = v3(portal, "tasks.task.list", {"pagination": {"page": -1}})
    fails(negative, 400, "BITRIX_REST_V3_EXCEPTION_INVALIDPAGINATIONEXCEPTION")


def test_v3_openapi_document_and_scope_list(portal: Sandbox) -> None:
    for name in ("rest.documentation.openapi", "documentation"):
        url = f"{portal.webhook_url.replace('/rest/', '/rest/api/')}{name}"
        document = portal.session.get(url, timeout=30).json()
        assert document["openapi"] == "3.0.0" and "/tasks.task.get" in document["paths"]
        assert "/crm.lead.add" not in document["paths"]  # v2 only
    items = ok(v3(portal, "rest.scope.list", {}))["items"]
    scopes = {item["method"]: item["scope"] for item in items}
    assert scopes["tasks.task.get"] == "task" and scopes["crm.lead.add"] == "crm"
    fails(portal.rest("rest.scope.list"), 404, "ERROR_METHOD_NOT_FOUND")  # REST 3.0 only
