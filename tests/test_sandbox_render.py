"""The sandbox's fast paths give the answers its slow paths gave (issue 19).

The export benchmark measured the sandbox more than the contenders: per-date local-zone lookups,
a 50-field row view per row and per answer, and a pretty-printing encoder. These tests pin the
fast replacements to the plain definitions they replace, and check that a cached rendering can
never outlive the row it came from.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from typing import Any

import b24agent.sandbox.methods  # noqa: F401  (registers the methods dispatch runs)
import pytest
from b24agent.sandbox.config import Credentials, SandboxConfig
from b24agent.sandbox.context import CallContext
from b24agent.sandbox.dates import iso_datetime
from b24agent.sandbox.jsonout import RowJSON, encode
from b24agent.sandbox.portal import Portal
from conftest import Sandbox, ok
from hypothesis import given, settings
from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
ROWS = st.dictionaries(st.text(), JSON, max_size=5)


def _plain(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@given(st.lists(ROWS, max_size=6), JSON)
def test_encode_splices_rows_exactly_as_plain_json(rows: list[dict[str, Any]], other: Any) -> None:
    wrapped = [RowJSON(json.dumps(row, separators=(",", ":"))) for row in rows]
    assert encode({"result": {"p0": wrapped, "x": other}}) == _plain(
        {"result": {"p0": rows, "x": other}}
    )


def test_encode_is_not_fooled_by_its_own_mark_in_the_data() -> None:
    row = {"TITLE": '"\x00b24-row\x00"', "NAME": "\x00b24-row\x00"}
    payload = {"result": [RowJSON(json.dumps(row)), {"q": 'x"\x00b24-row\x00'}]}
    assert json.loads(encode(payload)) == {"result": [row, {"q": 'x"\x00b24-row\x00'}]}


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu"]
)
@settings(max_examples=300)
@given(seconds=st.integers(min_value=-(2**31), max_value=2**33) | st.floats(0, 2e9))
def test_iso_datetime_is_the_local_zone_of_that_moment(zone: str, seconds: float) -> None:
    with _timezone(zone):
        expected = datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
        assert iso_datetime(seconds) == expected


class _timezone:
    """Switch the process's local zone for a block (the date cache is keyed by zone)."""

    def __init__(self, zone: str) -> None:
        self.zone = zone

    def __enter__(self) -> None:
        self.before = os.environ.get("TZ")
        os.environ["TZ"] = self.zone
        time.tzset()

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = self.before
        time.tzset()


def test_iso_datetime_around_a_dst_switch() -> None:
    switch = 1711846800  # 2024-03-31 01:00 UTC: Berlin moves from +01:00 to +02:00
    with _timezone("Europe/Berlin"):
        assert iso_datetime(switch - 1) == "2024-03-31T01:59:59+01:00"
        assert iso_datetime(switch) == "2024-03-31T03:00:00+02:00"


def _list(portal: Sandbox, **params: Any) -> list[dict[str, Any]]:
    return ok(portal.rest("crm.lead.list", {"order": {"ID": "ASC"}, **params}))


def test_list_answers_a_changed_row_never_its_old_rendering(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 60})
    first = _list(portal)
    assert _list(portal) == first  # second read comes from the rendered rows
    ok(portal.rest("crm.lead.update", {"id": 3, "fields": {"TITLE": "changed", "OPPORTUNITY": 7}}))
    again = {row["ID"]: row for row in _list(portal)}
    assert again["3"]["TITLE"] == "changed" and again["3"]["OPPORTUNITY"] == "7.00"
    assert again["3"]["DATE_MODIFY"] >= first[2]["DATE_MODIFY"]
    assert [r for r in _list(portal) if r["ID"] != "3"] == [r for r in first if r["ID"] != "3"]
    # The default select and an explicit one tell the same story about the same row.
    chosen = _list(portal, select=["ID", "TITLE", "DATE_CREATE"], filter={"ID": 3})
    assert chosen == [{k: again["3"][k] for k in ("ID", "TITLE", "DATE_CREATE")}]


def test_reset_and_reseed_never_serve_rows_of_the_old_data(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 5})
    ok(portal.rest("crm.lead.update", {"id": 2, "fields": {"TITLE": "old data"}}))
    assert "old data" in [r["TITLE"] for r in _list(portal)]
    portal.admin("reset", {})
    portal.admin("seed", {"crm.lead": 5})
    assert "old data" not in [r["TITLE"] for r in _list(portal)]
    assert portal.admin("count", {"kind": "crm.lead"}) == {"count": 5}


def test_batch_references_reach_into_rendered_rows(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 120})
    cmd = {
        "p0": "crm.lead.list?order[ID]=ASC&filter[>ID]=0&start=-1",
        "p1": "crm.lead.list?order[ID]=ASC&filter[>ID]=$result[p0][49][ID]&start=-1",
        "t": "crm.lead.get?id=$result[p1][0][ID]",
    }
    answer = ok(portal.rest("batch", {"cmd": cmd, "halt": 0}))
    assert [r["ID"] for r in answer["result"]["p1"]][:2] == ["51", "52"]
    assert answer["result"]["t"]["ID"] == "51"


def test_count_is_an_admin_call_that_never_touches_the_bucket(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "standard")
    sandbox.admin("seed", {"crm.lead": 3, "event.offline": 4})
    before = sandbox.stats()["requests"]
    for _ in range(60):  # more than the bucket holds
        assert sandbox.admin("count", {"kind": "crm.lead"}) == {"count": 3}
    assert sandbox.admin("count", {"kind": "event.offline"}) == {"count": 4}
    assert sandbox.stats()["requests"] == before
    assert ok(sandbox.rest("server.time"))  # the bucket is still full


def test_a_command_is_charged_its_own_work_not_its_wait_for_the_store() -> None:
    portal = Portal(SandboxConfig(plan="unlimited"), Credentials())
    auth = portal.webhook_auth("1", portal.credentials.webhook_code)
    held = threading.Event()

    def hold_store() -> None:
        with portal.store.transaction():
            held.set()
            time.sleep(0.4)

    holder = threading.Thread(target=hold_store)
    holder.start()
    held.wait()
    started = time.monotonic()
    portal.dispatch(CallContext(portal, auth), "crm.lead.add", {"fields": {"TITLE": "x"}})
    waited = time.monotonic() - started
    holder.join()
    used, _ = portal.operating.state("webhook:1", "crm.lead.add")
    assert waited >= 0.3  # it did wait for the lock ...
    assert used == 0  # ... and was not charged for it (under the 0.1 s the portal ignores)


def test_http_rejections_and_refused_commands_are_counted_apart(start_sandbox) -> None:
    sandbox = start_sandbox("--plan", "standard")
    sandbox.admin("settings", {"method_cost_ms": {"server.time": 500_000}})
    answer = ok(sandbox.rest("batch", {"cmd": {"a": "server.time", "b": "server.time"}}))
    assert answer["result_error"]["b"]["error"] == "OPERATION_TIME_LIMIT"
    assert sandbox.rest("server.time").status_code == 429  # a refusal of the whole request
    ok(sandbox.rest("batch", {"cmd": {"c": "no.such.method"}}))  # an error, not a refusal
    for _ in range(60):  # past the bucket: 503s
        sandbox.rest("scope")
    stats = sandbox.stats()
    assert stats["command_refusals"] == 1
    assert stats["http_rejections"] == 1 + stats["rate_limit_rejections"] > 1
    sandbox.admin("refill", {})
    assert ok(sandbox.rest("scope"))  # the bucket is empty again ...
    assert ok(sandbox.rest("server.time"))  # ... and so is the operating-time window
    assert sandbox.admin("count", {"kind": "crm.lead"}) == {"count": 0}
