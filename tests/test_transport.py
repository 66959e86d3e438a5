"""Transport and retry policy against the real sandbox: what is resent, what is not, and how bad
answers (HTML, truncated JSON, 500s, timeouts, refused connections) surface as clear errors."""

from __future__ import annotations

import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import (
    ApiError,
    AuthError,
    B24Error,
    ConflictError,
    NotFoundError,
    OperationTimeLimitError,
    OutcomeUnknownError,
    TransientError,
    ValidationError,
)
from client_support import client_for, secrets_of
from conftest import Sandbox

LEAD = {"fields": {"TITLE": "transport test"}}


def faults(portal: Sandbox, *rules: dict[str, Any]) -> None:
    portal.admin("faults", {"rules": list(rules)})


def lead_count(portal: Sandbox) -> int:
    return len(portal.rest("crm.lead.list", {"select": ["ID"]}).json()["result"])


def calls_of(portal: Sandbox, method: str) -> int:
    return portal.stats()["by_method"].get(method, 0)


def assert_no_secrets(portal: Sandbox, error: B24Error, secrets: list[str] | None = None) -> None:
    parts = [str(error), repr(error), error.message, error.hint, str(error.to_json())]
    text = " ".join([*parts, *traceback.format_exception(error)])
    for secret in secrets_of(portal) if secrets is None else secrets:
        assert secret not in text


# --- reads: malformed answers are retried, then TransientError ---------------------------------


@pytest.mark.parametrize(
    "rule,what",
    [
        ({"status": 502, "body": "<html><body>Bad Gateway</body></html>"}, "HTML page"),
        (
            {"status": 200, "body": '{"result": [{"ID": "1"', "content_type": "application/json"},
            "not valid JSON",
        ),
        ({"status": 200, "body": ""}, "empty"),
        ({"status": 200, "body": "[1, 2]", "content_type": "application/json"}, "JSON list"),
        (
            {"status": 200, "body": '{"total": 3}', "content_type": "application/json"},
            "without result",
        ),
        ({"error": "INTERNAL_SERVER_ERROR", "status": 500}, "Fault injected"),
    ],
)
def test_bad_answers_on_reads_are_retried_then_transient(
    portal: Sandbox, tmp_path: Path, rule: dict[str, Any], what: str
) -> None:
    faults(portal, {"method": "crm.lead.list", **rule})
    client = client_for(portal, tmp_path, max_retries=2)
    with pytest.raises(TransientError) as info:
        client.call("crm.lead.list")
    assert what in info.value.message
    assert info.value.exit_code == 6 and info.value.retryable
    assert client.requests_sent == 3 == calls_of(portal, "crm.lead.list")


def test_html_page_echoing_the_webhook_url_does_not_leak_it(
    portal: Sandbox, tmp_path: Path
) -> None:
    page = f"<html>404 for {portal.webhook_url}crm.lead.list</html>"
    faults(portal, {"method": "crm.lead.list", "status": 502, "body": page})
    client = client_for(portal, tmp_path, max_retries=0)
    with pytest.raises(TransientError) as info:
        client.call("crm.lead.list")
    assert_no_secrets(portal, info.value)


def test_read_recovers_after_transient_failures(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.list", "error": "INTERNAL_SERVER_ERROR", "times": 2})
    client = client_for(portal, tmp_path, max_retries=3)
    assert client.call("crm.lead.list").result == []
    assert client.requests_sent == 3


def test_error_inside_a_200_answer_is_an_error(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.list", "error": "ERROR_CORE", "status": 200})
    client = client_for(portal, tmp_path)
    with pytest.raises(ApiError) as info:
        client.call("crm.lead.list")
    assert info.value.code == "ERROR_CORE" and info.value.exit_code == 1
    assert client.requests_sent == 1  # a refusal is final: not resent


def test_empty_error_code_not_found(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(NotFoundError) as info:
        client.call("crm.lead.get", {"id": 424242})
    assert info.value.exit_code == 1 and info.value.http_status == 400


def test_read_timeout_is_retried(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.list", "error": None, "delay_ms": 600, "times": 1})
    client = client_for(portal, tmp_path, read_timeout=0.2)
    assert client.call("crm.lead.list").result == []
    assert client.requests_sent == 2
    time.sleep(0.6)  # let the abandoned request finish so it cannot land in the next test


# --- writes: resent only when provably not run ------------------------------------------------


def test_write_run_then_500_is_outcome_unknown_and_not_resent(
    portal: Sandbox, tmp_path: Path
) -> None:
    faults(portal, {"method": "crm.lead.add", "error": "INTERNAL_SERVER_ERROR", "after": True})
    client = client_for(portal, tmp_path, max_retries=4)
    before = lead_count(portal)
    with pytest.raises(OutcomeUnknownError) as info:
        client.call("crm.lead.add", LEAD)
    assert info.value.exit_code == 7 and not info.value.retryable
    assert "may or may not" in info.value.hint
    assert lead_count(portal) == before + 1  # the portal did it exactly once
    assert client.requests_sent == 1 == calls_of(portal, "crm.lead.add")


def test_write_timeout_is_outcome_unknown(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.add", "error": None, "delay_ms": 600})
    client = client_for(portal, tmp_path, read_timeout=0.2)
    with pytest.raises(OutcomeUnknownError) as info:
        client.call("crm.lead.add", LEAD)
    assert "timed out" in info.value.message
    assert client.requests_sent == 1
    # The portal did run it after all, once: exactly why the client must not resend.
    deadline = time.monotonic() + 10
    while lead_count(portal) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lead_count(portal) == 1


def test_write_html_answer_is_outcome_unknown(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.add", "status": 502, "body": "<html>oops</html>"})
    client = client_for(portal, tmp_path)
    with pytest.raises(OutcomeUnknownError):
        client.call("crm.lead.add", LEAD)
    assert client.requests_sent == 1


def test_write_refused_by_rate_limit_is_resent(portal: Sandbox, tmp_path: Path) -> None:
    faults(
        portal,
        {"method": "crm.lead.add", "error": "QUERY_LIMIT_EXCEEDED", "status": 503, "times": 2},
    )
    client = client_for(portal, tmp_path, rate_limiter="memory", rate=1000.0, burst=1000)
    before = lead_count(portal)
    new_id = client.call("crm.lead.add", LEAD).result
    assert isinstance(new_id, int)
    assert lead_count(portal) == before + 1
    assert client.requests_sent == 3


def test_rate_limit_that_persists_gives_up_as_transient(portal: Sandbox, tmp_path: Path) -> None:
    faults(portal, {"method": "crm.lead.add", "error": "QUERY_LIMIT_EXCEEDED", "status": 503})
    client = client_for(
        portal, tmp_path, rate_limiter="memory", rate=1000.0, burst=1000, max_retries=2
    )
    with pytest.raises(TransientError) as info:
        client.call("crm.lead.add", LEAD)
    assert info.value.code == "QUERY_LIMIT_EXCEEDED" and info.value.exit_code == 6
    assert lead_count(portal) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_transient_even_for_writes(portal: Sandbox, tmp_path: Path) -> None:
    port = free_port()
    client = client_for(portal, tmp_path, base_url=f"http://127.0.0.1:{port}", max_retries=1)
    with pytest.raises(TransientError) as info:
        client.call("crm.lead.add", LEAD)
    assert info.value.code == "CONNECTION_FAILED"
    assert "not sent" in info.value.message
    assert client.requests_sent == 0
    assert_no_secrets(portal, info.value)


# --- limits ---------------------------------------------------------------------------------


def test_operation_time_limit_past_the_wait_cap_fails_fast_and_is_shared(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("settings", {"operating_budget_s": 1.0, "method_cost_ms": {"crm.lead.list": 800}})
    first = client_for(portal, tmp_path)
    first.call("crm.lead.list")
    last = first.call("crm.lead.list")  # 1.6 s used: the portal blocks the next one for ~10 min
    with pytest.raises(OperationTimeLimitError) as info:
        first.call("crm.lead.list")
    # The 429 carries no reset time (limits.md); the last success's ``time`` gives it.
    assert info.value.exit_code == 6
    assert info.value.details["operating_reset_at"] == last.time["operating_reset_at"]
    assert portal.stats()["operating_limit_rejections"] == 1  # refused once, never resent
    # Another process on the machine knows from the shared limiter file and does not even ask.
    second = client_for(portal, tmp_path)
    with pytest.raises(OperationTimeLimitError):
        second.call("crm.lead.list")
    assert second.requests_sent == 0
    assert second.call("crm.lead.fields").result  # other methods are not held


def test_method_near_its_budget_waits_before_the_portal_blocks(
    portal: Sandbox, tmp_path: Path
) -> None:
    # 200 s per call as accounted by the portal: two calls reach 400 s of the 420 s budget.
    portal.admin(
        "settings", {"operating_budget_s": 10000.0, "method_cost_ms": {"crm.lead.list": 200000}}
    )
    client = client_for(portal, tmp_path, max_operating_wait_s=1.0)
    client.call("crm.lead.list")
    client.call("crm.lead.list")
    with pytest.raises(OperationTimeLimitError) as info:
        client.call("crm.lead.list")
    assert "400 s" in info.value.message
    assert client.requests_sent == 2  # held locally, before the portal had to refuse
    assert portal.stats()["operating_limit_rejections"] == 0


# --- auth hints, v3 --------------------------------------------------------------------------


def test_wrong_auth_type_hint(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(AuthError) as info:
        client.call("event.offline.get", {"clear": 0})
    assert info.value.code == "WRONG_AUTH_TYPE" and info.value.exit_code == 4
    assert "B24_AUTH_MODE=oauth" in info.value.hint


def test_invalid_webhook_code_is_auth_error_without_the_code(
    portal: Sandbox, tmp_path: Path
) -> None:
    wrong = "0123456789abcdef0123456789abcdef"
    client = client_for(portal, tmp_path, webhook_code=wrong)
    with pytest.raises(AuthError) as info:
        client.call("user.current")
    assert wrong not in str(info.value) + info.value.hint


V3_TASK = {"fields": {"title": "v3 task", "creatorId": 1, "responsibleId": 1}}


def test_v3_idempotency_key_replays_and_conflicts(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    first = client.call("tasks.task.add", V3_TASK, api="v3", idempotency_key="order-42")
    again = client.call("tasks.task.add", V3_TASK, api="v3", idempotency_key="order-42")
    assert not first.replayed and again.replayed
    assert again.result == first.result
    assert first.result["item"]["id"] > 0
    other = {"fields": {**V3_TASK["fields"], "title": "something else"}}
    with pytest.raises(ConflictError) as info:
        client.call("tasks.task.add", other, api="v3", idempotency_key="order-42")
    assert info.value.exit_code == 5
    tasks = client.call("tasks.task.list", {}, api="v3").result["items"]
    assert len(tasks) == 1


def test_v3_validation_error_names_the_field(portal: Sandbox, tmp_path: Path) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(ApiError) as info:
        client.call("tasks.task.add", {"fields": {"title": "no owner"}}, api="v3")
    assert "creatorId" in info.value.message or "responsibleId" in info.value.message


def test_bad_idempotency_key_and_params_are_refused_before_sending(
    portal: Sandbox, tmp_path: Path
) -> None:
    client = client_for(portal, tmp_path)
    with pytest.raises(ValidationError):
        client.call("tasks.task.add", V3_TASK, api="v3", idempotency_key="é" * 3)
    with pytest.raises(ValidationError) as info:
        client.call("crm.lead.add", {"fields": {"TITLE": "x", "PHONE": "+15550100"}})
    assert "params.fields.PHONE" in info.value.message and info.value.exit_code == 2
    with pytest.raises(B24Error) as bad_name:
        client.call("../crm.lead.add")
    assert bad_name.value.exit_code == 2
    assert client.requests_sent == 0


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_reach_error_text(portal: Sandbox, tmp_path: Path) -> None:
    """The portal echoes secrets in descriptions and pages; no error may carry them on. Each
    client is checked against the secrets it was given (a webhook client cannot know an app's)."""
    oauth = portal.oauth
    echo = (
        f"token {oauth['access_token']} refresh {oauth['refresh_token']} via "
        f"{portal.webhook_url} secret {oauth['client_secret']} code {portal.webhook['code']}"
    )
    webhook = client_for(portal, tmp_path / "w", max_retries=0)
    app = client_for(portal, tmp_path / "o", oauth=True, max_retries=0)
    faults(
        portal,
        {"method": "crm.lead.list", "error": "ERROR_CORE", "description": echo},
        {"method": "crm.lead.add", "error": "INTERNAL_SERVER_ERROR", "description": echo},
        {"method": "crm.lead.fields", "status": 500, "body": f"<pre>{echo}</pre>"},
        {"method": "oauth.token", "error": "invalid_grant", "status": 400, "description": echo},
    )
    raised: list[tuple[B24Error, list[str]]] = []
    calls = [("crm.lead.list", None), ("crm.lead.add", LEAD), ("crm.lead.fields", None)]
    for client, known in (
        (webhook, [portal.webhook["code"]]),
        (app, [oauth["access_token"], oauth["refresh_token"], oauth["client_secret"]]),
    ):
        for method, params in calls:
            with pytest.raises(B24Error) as info:
                client.call(method, params)
            raised.append((info.value, known))
    portal.admin("expire-tokens", {})
    with pytest.raises(AuthError) as refused:
        app.call("user.current")  # the token server refuses and echoes
    raised.append((refused.value, [oauth["refresh_token"], oauth["client_secret"]]))
    kinds = {type(error).__name__ for error, _ in raised}
    assert kinds >= {"ApiError", "OutcomeUnknownError", "TransientError", "AuthError"}
    for error, known in raised:
        assert_no_secrets(portal, error, known)
