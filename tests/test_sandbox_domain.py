"""Conformance of the sandbox portal's domain methods with the docs, over real HTTP.

CRM in both families (``crm.lead.*`` and ``crm.item.*`` on the same records), filters, select,
order and paging; tasks on ``/rest/`` and REST 3.0; users; messages; event bindings, online
delivery to a local handler, and the offline queue the no-loss worker relies on (protocol.md
section 10): merging, disjoint reservations, process ids, clear modes, errors, connectors.
The last tests work in-process on what HTTP cannot show: transaction rollback, a file-backed
store, and a property test of the filter compiler against Python's own comparisons.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from b24agent.sandbox import crm_fields, crm_model, filters
from b24agent.sandbox.store import Query, Store
from conftest import Sandbox, fails, ok
from hypothesis import given, settings
from hypothesis import strategies as st

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
ENTITIES = {"lead": 1, "deal": 2, "contact": 3, "company": 4}
V3 = "BITRIX_REST_V3_EXCEPTION_"


# --- helpers ------------------------------------------------------------------------------


def app(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> requests.Response:
    """A call as the OAuth application (``auth`` param to ``/rest/<method>``)."""
    return portal.session.post(
        f"{portal.url}/rest/{method}",
        json={**(params or {}), "auth": portal.oauth["access_token"]},
        timeout=30,
    )


def v3(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> requests.Response:
    """A REST 3.0 webhook call (JSON POST to ``/rest/api/<user>/<code>/<method>``)."""
    url = portal.webhook_url.replace("/rest/", "/rest/api/", 1) + method
    return portal.session.post(url, json=params or {}, timeout=30)


def add(portal: Sandbox, entity: str, **fields: Any) -> int:
    return int(ok(portal.rest(f"crm.{entity}.add", {"fields": fields})))


def lead_ids(portal: Sandbox, params: dict[str, Any], http: str = "post_json") -> list[int]:
    rows = ok(portal.rest("crm.lead.list", {"order": {"ID": "ASC"}, **params}, http=http))
    return [int(row["ID"]) for row in rows]


def bind_offline(portal: Sandbox, event: str, connector: str | None = None) -> None:
    params = {"event": event, "event_type": "offline"}
    if connector is not None:
        params["auth_connector"] = connector
    assert ok(app(portal, "event.bind", params)) is True


def offline_list(portal: Sandbox, **params: Any) -> list[dict[str, Any]]:
    return ok(app(portal, "event.offline.list", params))


def offline_get(portal: Sandbox, **params: Any) -> dict[str, Any]:
    return ok(app(portal, "event.offline.get", params))


# --- crm.<entity>.* --------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ENTITIES)
def test_crm_crud_round_trip(portal: Sandbox, entity: str) -> None:
    record_id = add(portal, entity, TITLE="First", NAME="Ann", COMMENTS="hello")
    record = ok(portal.rest(f"crm.{entity}.get", {"id": record_id}))
    assert record["ID"] == str(record_id)
    assert record["COMMENTS"] == "hello"
    assert ISO.match(record["DATE_CREATE"]) and ISO.match(record["DATE_MODIFY"])
    assert record["ASSIGNED_BY_ID"] == "1" and record["CREATED_BY_ID"] == "1"
    assert ok(portal.rest(f"crm.{entity}.update", {"id": record_id, "fields": {"COMMENTS": "x"}}))
    assert ok(portal.rest(f"crm.{entity}.get", {"id": record_id}))["COMMENTS"] == "x"
    assert ok(portal.rest(f"crm.{entity}.delete", {"id": record_id})) is True
    for verb, extra in (("get", {}), ("update", {"fields": {"COMMENTS": "y"}}), ("delete", {})):
        body = fails(portal.rest(f"crm.{entity}.{verb}", {"id": record_id, **extra}), 400, "")
        assert body == {"error": "", "error_description": "Not found"}


@pytest.mark.parametrize("bad", [None, 0, -3, "abc"])
def test_crm_get_needs_a_positive_id(portal: Sandbox, bad: Any) -> None:
    params = {} if bad is None else {"id": bad}
    body = fails(portal.rest("crm.deal.get", params), 400, "")
    assert body["error_description"] == "ID is not defined or invalid."


def test_lead_defaults_and_derived_fields(portal: Sandbox) -> None:
    lead_id = add(portal, "lead", NAME="No title", OPPORTUNITY=12500, STATUS_ID="CONVERTED")
    lead = ok(portal.rest("crm.lead.get", {"id": lead_id}))
    assert lead["TITLE"] == f"Lead #{lead_id}"
    assert lead["OPPORTUNITY"] == "12500.00"
    assert lead["STATUS_SEMANTIC_ID"] == "S" and ISO.match(lead["DATE_CLOSED"])
    assert lead["HAS_PHONE"] == "N" and lead["OPENED"] == "Y"
    assert lead["BIRTHDATE"] == "" and lead["HONORIFIC"] is None
    deal = ok(portal.rest("crm.deal.get", {"id": add(portal, "deal", STAGE_ID="WON")}))
    assert deal["STAGE_SEMANTIC_ID"] == "S" and deal["CLOSED"] == "Y"


def test_multi_fields_add_update_delete(portal: Sandbox) -> None:
    phones = [{"VALUE": "555888", "VALUE_TYPE": "WORK"}, {"VALUE": "+1 202", "VALUE_TYPE": "HOME"}]
    emails = [{"VALUE": "a@example.com"}]
    contact_id = add(portal, "contact", NAME="M", PHONE=phones, EMAIL=emails)
    contact = ok(portal.rest("crm.contact.get", {"id": contact_id}))
    assert [(p["VALUE"], p["VALUE_TYPE"], p["TYPE_ID"]) for p in contact["PHONE"]] == [
        ("555888", "WORK", "PHONE"),
        ("+1 202", "HOME", "PHONE"),
    ]
    assert contact["EMAIL"][0]["VALUE_TYPE"] == "WORK"  # the default value type
    assert contact["HAS_PHONE"] == "Y" and contact["HAS_EMAIL"] == "Y"
    first, second = (p["ID"] for p in contact["PHONE"])
    changes = [
        {"ID": first, "VALUE": "111"},
        {"ID": second, "DELETE": "Y"},
        {"VALUE": "222", "VALUE_TYPE": "MOBILE"},
    ]
    ok(portal.rest("crm.contact.update", {"id": contact_id, "fields": {"PHONE": changes}}))
    contact = ok(portal.rest("crm.contact.get", {"id": contact_id}))
    assert (contact["PHONE"][0]["ID"], contact["PHONE"][0]["VALUE"]) == (first, "111")
    assert [p["VALUE"] for p in contact["PHONE"]] == ["111", "222"]
    assert "WEB" not in contact  # empty multi-fields are left out of .get


def test_multi_fields_from_a_form_body(portal: Sandbox) -> None:
    fields = {"TITLE": "form", "PHONE": [{"VALUE": "42", "VALUE_TYPE": "WORK"}]}
    lead_id = int(ok(portal.rest("crm.lead.add", {"fields": fields}, http="post_form")))
    assert lead_ids(portal, {"filter": {"PHONE": "42"}}, http="get") == [lead_id]


@pytest.mark.parametrize("entity", ["lead", "deal"])
def test_origin_fields_are_stored_and_filterable(portal: Sandbox, entity: str) -> None:
    target = add(portal, entity, ORIGINATOR_ID="erp", ORIGIN_ID="A-17")
    add(portal, entity, ORIGINATOR_ID="erp", ORIGIN_ID="A-18")
    add(portal, entity, ORIGINATOR_ID="shop", ORIGIN_ID="A-17")
    found = ok(
        portal.rest(
            f"crm.{entity}.list",
            {
                "filter": {"ORIGINATOR_ID": "erp", "ORIGIN_ID": "A-17"},
                "select": ["ID", "ORIGIN_ID"],
            },
        )
    )
    assert found == [{"ID": str(target), "ORIGIN_ID": "A-17"}]


@pytest.fixture
def five_leads(portal: Sandbox) -> list[int]:
    specs = [
        ("Alpha one", 100, "NEW"),
        ("Beta two", 200, "IN_PROCESS"),
        ("alpha three", 300, "NEW"),
        ("Gamma", 400, "JUNK"),
        ("Delta_50%", 500, "CONVERTED"),
    ]
    return [add(portal, "lead", TITLE=t, OPPORTUNITY=o, STATUS_ID=s) for t, o, s in specs]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({">=OPPORTUNITY": 300}, [2, 3, 4]),
        ({">OPPORTUNITY": "300"}, [3, 4]),
        ({"<=OPPORTUNITY": 200}, [0, 1]),
        ({"<OPPORTUNITY": 200}, [0]),
        ({"=STATUS_ID": "NEW"}, [0, 2]),
        ({"STATUS_ID": "NEW"}, [0, 2]),
        ({"!STATUS_ID": "NEW"}, [1, 3, 4]),
        ({"!=STATUS_ID": "NEW"}, [1, 3, 4]),
        ({"%TITLE": "ALPHA"}, [0, 2]),
        ({"%TITLE": "_50%"}, [4]),
        ({"=%TITLE": "alpha%"}, [0, 2]),
        ({"%=TITLE": "%a"}, [3]),
        ({"!%TITLE": "alpha"}, [1, 3, 4]),
        ({"!=%TITLE": "%ta%"}, [0, 2, 3]),
        ({"@STATUS_ID": ["JUNK", "CONVERTED"]}, [3, 4]),
        ({"!@STATUS_ID": ["JUNK", "CONVERTED"]}, [0, 1, 2]),
        ({"STATUS_ID": ["JUNK", "IN_PROCESS"]}, [1, 3]),
        ({">OPPORTUNITY": 100, "<OPPORTUNITY": 500, "!STATUS_ID": "JUNK"}, [1, 2]),
        ({"NO_SUCH_FIELD": "x"}, [0, 1, 2, 3, 4]),
    ],
)
def test_filter_operators(
    portal: Sandbox, five_leads: list[int], condition: dict[str, Any], expected: list[int]
) -> None:
    wanted = [five_leads[i] for i in expected]
    assert lead_ids(portal, {"filter": condition}) == wanted
    assert lead_ids(portal, {"filter": condition}, http="post_form") == wanted


def test_filter_by_id_range_and_dates(portal: Sandbox, five_leads: list[int]) -> None:
    assert lead_ids(portal, {"filter": {">ID": five_leads[2]}}) == five_leads[3:]
    created = ok(portal.rest("crm.lead.get", {"id": five_leads[0]}))["DATE_CREATE"]
    assert lead_ids(portal, {"filter": {">=DATE_CREATE": created}}) == five_leads
    assert lead_ids(portal, {"filter": {"<DATE_CREATE": created}}) == []


def test_select_masks(portal: Sandbox) -> None:
    add(portal, "lead", TITLE="S", PHONE=[{"VALUE": "1"}], UF_CRM_1700000000="custom")
    default = ok(portal.rest("crm.lead.list", {}))[0]
    star = ok(portal.rest("crm.lead.list", {"select": ["*"]}))[0]
    assert default == star
    assert "TITLE" in star and "PHONE" not in star and "UF_CRM_1700000000" not in star
    custom = ok(portal.rest("crm.lead.list", {"select": ["UF_*"]}))[0]
    assert custom == {"ID": custom["ID"], "UF_CRM_1700000000": "custom"}
    picked = ok(portal.rest("crm.lead.list", {"select": ["TITLE", "PHONE", "NOPE"]}))[0]
    assert set(picked) == {"ID", "TITLE", "PHONE"} and picked["PHONE"][0]["VALUE"] == "1"


def test_order_by_field_then_id(portal: Sandbox, five_leads: list[int]) -> None:
    order = {"STATUS_ID": "DESC", "OPPORTUNITY": "DESC"}
    rows = ok(portal.rest("crm.lead.list", {"order": order, "select": ["ID"]}))
    # STATUS_ID: NEW, NEW, JUNK, IN_PROCESS, CONVERTED (desc); NEW ties by OPPORTUNITY desc.
    assert [int(r["ID"]) for r in rows] == [five_leads[i] for i in (2, 0, 3, 1, 4)]


def test_paging_total_next_and_start_minus_one(portal: Sandbox) -> None:
    assert portal.admin("seed", {"crm.lead": 120}) == {"crm.lead": 120}
    first = portal.rest("crm.lead.list", {"select": ["ID"]}).json()
    assert (len(first["result"]), first["total"], first["next"]) == (50, 120, 50)
    last = portal.rest("crm.lead.list", {"select": ["ID"], "start": 100}).json()
    assert len(last["result"]) == 20 and last["total"] == 120 and "next" not in last
    fast = portal.rest("crm.lead.list", {"select": ["ID"], "start": -1}).json()
    assert len(fast["result"]) == 50 and fast["total"] == 0 and "next" not in fast


def test_fast_export_by_id_collects_every_row_once(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.lead": 130})
    seen: list[int] = []
    while True:
        params = {"order": {"ID": "ASC"}, "filter": {">ID": seen[-1] if seen else 0}, "start": -1}
        page = lead_ids(portal, {**params, "select": ["ID"]})
        seen += page
        if len(page) < 50:
            break
    assert seen == list(range(1, 131))


def test_php_style_empty_maps_are_accepted(portal: Sandbox, five_leads: list[int]) -> None:
    assert lead_ids(portal, {"filter": [], "order": [], "select": []}) == five_leads
    assert ok(portal.rest("crm.company.list", {"filter": {"TITLE": "nobody"}})) == []


def test_fields_descriptions(portal: Sandbox) -> None:
    lead = ok(portal.rest("crm.lead.fields"))
    assert lead["TITLE"] == {
        "type": "string",
        "isRequired": False,
        "isReadOnly": False,
        "isImmutable": False,
        "isMultiple": False,
        "isDynamic": False,
        "title": "Lead name",
    }
    assert lead["ID"]["isReadOnly"] is True
    assert lead["PHONE"]["type"] == "crm_multifield" and lead["PHONE"]["isMultiple"] is True
    assert lead["STATUS_ID"]["statusType"] == "STATUS"
    assert "STAGE_ID" in ok(portal.rest("crm.deal.fields"))
    assert "COMPANY_TYPE" in ok(portal.rest("crm.company.fields"))


def test_read_only_and_unknown_fields_are_ignored(portal: Sandbox) -> None:
    lead_id = add(portal, "lead", TITLE="t", ID=999, DATE_CREATE="2001-01-01", NOPE="x")
    lead = ok(portal.rest("crm.lead.get", {"id": lead_id}))
    assert lead["ID"] != "999" and not lead["DATE_CREATE"].startswith("2001") and "NOPE" not in lead


def test_contact_links_stay_consistent(portal: Sandbox) -> None:
    contacts = [add(portal, "contact", NAME=n) for n in ("a", "b", "c")]
    deal_id = add(portal, "deal", TITLE="d", CONTACT_IDS=contacts[:2])
    item = ok(portal.rest("crm.item.get", {"entityTypeId": 2, "id": deal_id}))["item"]
    assert (item["contactId"], item["contactIds"]) == (contacts[0], contacts[:2])
    ok(portal.rest("crm.deal.update", {"id": deal_id, "fields": {"CONTACT_ID": contacts[2]}}))
    deal = ok(portal.rest("crm.deal.get", {"id": deal_id}))
    item = ok(portal.rest("crm.item.get", {"entityTypeId": 2, "id": deal_id}))["item"]
    assert deal["CONTACT_ID"] == str(contacts[2]) and item["contactIds"] == [contacts[2]]
    assert deal["IS_RETURN_CUSTOMER"] == "Y"


# --- crm.item.* ------------------------------------------------------------------------------


@pytest.mark.parametrize(("entity", "type_id"), ENTITIES.items())
def test_item_crud_round_trip(portal: Sandbox, entity: str, type_id: int) -> None:
    added = ok(portal.rest("crm.item.add", {"entityTypeId": type_id, "fields": {"comments": "c"}}))
    item = added["item"]
    assert isinstance(item["id"], int) and item["comments"] == "c"
    assert item["entityTypeId"] == type_id and ISO.match(item["createdTime"])
    assert item["assignedById"] == 1 and item["opened"] == "Y"
    fetched = ok(portal.rest("crm.item.get", {"entityTypeId": type_id, "id": item["id"]}))
    assert fetched["item"]["id"] == item["id"]
    params = {"entityTypeId": type_id, "id": item["id"], "fields": {"comments": "d"}}
    assert ok(portal.rest("crm.item.update", params))["item"]["comments"] == "d"
    assert ok(portal.rest(f"crm.{entity}.get", {"id": item["id"]}))["COMMENTS"] == "d"
    assert ok(portal.rest("crm.item.delete", {"entityTypeId": type_id, "id": item["id"]})) == []
    for verb in ("get", "delete"):
        body = fails(
            portal.rest(f"crm.item.{verb}", {"entityTypeId": type_id, "id": item["id"]}),
            400,
            "NOT_FOUND",
        )
        assert body["error_description"] == "Item not found"
    fails(portal.rest("crm.item.update", params), 400, "NOT_FOUND")


def test_item_unknown_entity_type(portal: Sandbox) -> None:
    fails(portal.rest("crm.item.list", {"entityTypeId": 999}), 400, "NOT_FOUND")


def test_both_families_share_records(portal: Sandbox) -> None:
    fields = {"title": "Via item", "stageId": "IN_PROCESS", "opportunity": 99.5, "originId": "o-1"}
    item = ok(portal.rest("crm.item.add", {"entityTypeId": 1, "fields": fields}))["item"]
    lead = ok(portal.rest("crm.lead.get", {"id": item["id"]}))
    assert (lead["TITLE"], lead["STATUS_ID"], lead["OPPORTUNITY"], lead["ORIGIN_ID"]) == (
        "Via item",
        "IN_PROCESS",
        "99.50",
        "o-1",
    )
    lead_id = add(portal, "lead", TITLE="Via lead", OPPORTUNITY="10")
    item = ok(portal.rest("crm.item.get", {"entityTypeId": 1, "id": lead_id}))["item"]
    assert (item["title"], item["opportunity"], item["stageId"]) == ("Via lead", 10.0, "NEW")


def test_item_fm_and_custom_fields(portal: Sandbox) -> None:
    fm = [{"typeId": "PHONE", "valueType": "WORK", "value": "+100"}]
    fields = {"title": "x", "fm": fm, "ufCrm_1721244707107": 5}
    item = ok(portal.rest("crm.item.add", {"entityTypeId": 3, "fields": fields}))["item"]
    assert [(f["typeId"], f["value"]) for f in item["fm"]] == [("PHONE", "+100")]
    assert isinstance(item["fm"][0]["id"], int) and item["ufCrm_1721244707107"] == 5
    contact = ok(portal.rest("crm.contact.get", {"id": item["id"]}))
    assert contact["PHONE"][0]["VALUE"] == "+100" and contact["UF_CRM_1721244707107"] == 5
    original = ok(
        portal.rest(
            "crm.item.get", {"entityTypeId": 3, "id": item["id"], "useOriginalUfNames": "Y"}
        )
    )["item"]
    assert original["UF_CRM_1721244707107"] == 5
    rows = ok(portal.rest("crm.contact.list", {"filter": {">UF_CRM_1721244707107": "4"}}))
    assert [int(r["ID"]) for r in rows] == [item["id"]]


def test_item_list_select_filter_order_paging(portal: Sandbox) -> None:
    portal.admin("seed", {"crm.deal": 60})
    params = {
        "entityTypeId": 2,
        "select": ["id", "title", "stageId"],
        "filter": {">id": 5, "0": {"logic": "OR", "0": {"stageId": "WON"}, "1": {"<id": 9}}},
        "order": {"id": "DESC"},
    }
    body = portal.rest("crm.item.list", params).json()
    items = body["result"]["items"]
    assert set(items[0]) == {"id", "title", "stageId"}
    ids = [i["id"] for i in items]
    assert ids == sorted(ids, reverse=True)
    assert items and all(i["id"] > 5 and (i["stageId"] == "WON" or i["id"] < 9) for i in items)
    assert {i["id"] for i in items} > {6, 7, 8}
    plain = portal.rest("crm.item.list", {"entityTypeId": 2, "select": ["id"]}).json()
    assert plain["total"] == 60 and plain["next"] == 50 and len(plain["result"]["items"]) == 50
    fast = portal.rest("crm.item.list", {"entityTypeId": 2, "start": -1}).json()
    assert fast["total"] == 0 and "next" not in fast and "fm" not in fast["result"]["items"][0]


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"filter": {"NOPE": 1}}, "Invalid filter: field 'NOPE' is not allowed in filter"),
        ({"filter": {">id": "abc"}}, "Invalid filter: field 'id' has invalid value"),
        ({"order": {"title": "UP"}}, "Invalid order: field 'title' is not allowed in order"),
    ],
)
def test_item_list_refuses_bad_filter_and_order(
    portal: Sandbox, params: dict[str, Any], text: str
) -> None:
    body = fails(
        portal.rest("crm.item.list", {"entityTypeId": 1, **params}), 400, "INVALID_ARG_VALUE"
    )
    assert body["error_description"] == text


def test_item_invalid_value(portal: Sandbox) -> None:
    params = {"entityTypeId": 2, "fields": {"opportunity": "lots"}}
    fails(portal.rest("crm.item.add", params), 400, "CRM_FIELD_ERROR_VALUE_NOT_VALID")
    assert ok(portal.rest("crm.deal.list", {})) == []  # nothing half-written


def test_item_fields(portal: Sandbox) -> None:
    fields = ok(portal.rest("crm.item.fields", {"entityTypeId": 1}))["fields"]
    assert fields["title"]["upperName"] == "TITLE" and fields["title"]["type"] == "string"
    assert fields["createdTime"]["isReadOnly"] is True and "fm" not in fields


# --- tasks v2 --------------------------------------------------------------------------------


def test_task_v2_lifecycle(portal: Sandbox) -> None:
    fields = {"TITLE": "Call", "RESPONSIBLE_ID": 2, "DEADLINE": "2030-01-02T10:00:00+00:00"}
    task = ok(portal.rest("tasks.task.add", {"fields": fields}))["task"]
    assert task["title"] == "Call" and task["responsibleId"] == "2" and task["status"] == "2"
    assert task["createdBy"] == "1" and ISO.match(task["deadline"])
    assert task["responsible"]["name"] == "John Smith"
    task_id = int(task["id"])
    got = ok(portal.rest("tasks.task.get", {"taskId": task_id, "select": ["ID", "TITLE"]}))
    assert got == {"task": {"id": str(task_id), "title": "Call"}}
    updated = ok(portal.rest("tasks.task.update", {"taskId": task_id, "fields": {"PRIORITY": 2}}))
    assert updated["task"]["priority"] == "2"
    done = ok(portal.rest("tasks.task.complete", {"taskId": task_id}))["task"]
    assert done["status"] == "5" and done["closedBy"] == "1" and ISO.match(done["closedDate"])
    assert ok(portal.rest("tasks.task.delete", {"taskId": task_id})) == {"task": True}
    assert ok(portal.rest("tasks.task.get", {"taskId": task_id})) == []


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("tasks.task.add", {"fields": {"RESPONSIBLE_ID": 1}}, "ERROR_CORE"),
        ("tasks.task.add", {"fields": {"TITLE": "t"}}, "ERROR_CORE"),
        ("tasks.task.add", {"fields": {"TITLE": "t", "RESPONSIBLE_ID": 77}}, "ERROR_CORE"),
        (
            "tasks.task.add",
            {"fields": {"TITLE": "t", "RESPONSIBLE_ID": 1, "STATUS": 9}},
            "ERROR_CORE",
        ),
        ("tasks.task.add", {}, "100"),
        ("tasks.task.update", {"taskId": 404, "fields": {"TITLE": "x"}}, "0"),
        ("tasks.task.complete", {"taskId": 404}, "0"),
        ("tasks.task.delete", {"taskId": 404}, "1048582"),
        ("tasks.task.get", {"taskId": "abc"}, "0"),
    ],
)
def test_task_v2_errors(portal: Sandbox, method: str, params: dict[str, Any], code: str) -> None:
    fails(portal.rest(method, params), 400, code)
    assert ok(portal.rest("tasks.task.list", {}))["tasks"] == []


def test_task_v2_list_filter_select_order_paging(portal: Sandbox) -> None:
    portal.admin("seed", {"tasks.task": 60})
    body = portal.rest("tasks.task.list", {"select": ["ID", "TITLE"]}).json()
    ids = [int(t["id"]) for t in body["result"]["tasks"]]
    assert ids == list(range(60, 10, -1))  # default order: ID descending
    assert body["total"] == 60 and body["next"] == 50
    assert set(body["result"]["tasks"][0]) == {"id", "title"}
    params = {
        "filter": {"RESPONSIBLE_ID": 2, ">ID": 10, "REAL_STATUS": 2, "TITLE": "Task #%"},
        "order": {"ID": "ASC"},
        "select": ["ID", "RESPONSIBLE_ID", "STATUS"],
    }
    tasks = ok(portal.rest("tasks.task.list", params))["tasks"]
    assert tasks and all(t["responsibleId"] == "2" and t["status"] == "2" for t in tasks)
    assert [int(t["id"]) for t in tasks] == sorted(int(t["id"]) for t in tasks)
    fails(portal.rest("tasks.task.list", {"order": {"NOPE": "ASC"}}), 400, "0")


def test_task_accomplice_filter(portal: Sandbox) -> None:
    fields = {"TITLE": "team", "RESPONSIBLE_ID": 1, "ACCOMPLICES": [3, 4]}
    task_id = int(ok(portal.rest("tasks.task.add", {"fields": fields}))["task"]["id"])
    ok(portal.rest("tasks.task.add", {"fields": {"TITLE": "solo", "RESPONSIBLE_ID": 1}}))
    tasks = ok(portal.rest("tasks.task.list", {"filter": {"ACCOMPLICE": 4}}))["tasks"]
    assert [int(t["id"]) for t in tasks] == [task_id]


# --- tasks REST 3.0 --------------------------------------------------------------------------


def v3_task(portal: Sandbox, **fields: Any) -> dict[str, Any]:
    base = {"title": "v3 task", "creatorId": 1, "responsibleId": 2}
    return ok(v3(portal, "tasks.task.add", {"fields": {**base, **fields}}))["item"]


def test_task_v3_lifecycle(portal: Sandbox) -> None:
    item = v3_task(portal, deadline="2030-05-01T12:00:00+02:00", priority="high")
    assert isinstance(item["id"], int) and item["status"] == "pending"
    assert item["priority"] == "high" and item["needsControl"] is False
    assert ISO.match(item["deadline"]) and item["creatorId"] == 1
    select = ["id", "title", "responsible.name", "responsible.email", "creator.id", "nope"]
    got = ok(v3(portal, "tasks.task.get", {"id": item["id"], "select": select}))["item"]
    assert got == {
        "id": item["id"],
        "title": "v3 task",
        "responsible": {"name": "John Smith", "email": "john.smith@sandbox.local"},
        "creator": {"id": 1},
    }
    change = {"id": item["id"], "fields": {"title": "renamed", "status": "completed"}}
    assert ok(v3(portal, "tasks.task.update", change)) == {"result": True}
    v2 = ok(portal.rest("tasks.task.get", {"taskId": item["id"]}))["task"]
    assert v2["title"] == "renamed" and v2["status"] == "5"
    assert ok(v3(portal, "tasks.task.delete", {"id": item["id"]})) == {"result": True}
    body = fails(
        v3(portal, "tasks.task.get", {"id": item["id"]}), 400, V3 + "ENTITYNOTFOUNDEXCEPTION"
    )
    assert body["error"]["message"] == f"Record with ID = `{item['id']}` not found"
    fails(v3(portal, "tasks.task.update", change), 403, V3 + "ACCESSDENIEDEXCEPTION")
    fails(v3(portal, "tasks.task.delete", {"id": item["id"]}), 403, V3 + "ACCESSDENIEDEXCEPTION")


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("tasks.task.add", {"fields": {"title": "t", "creatorId": 1}}, "responsibleId"),
        ("tasks.task.add", {}, "fields"),
        (
            "tasks.task.add",
            {"fields": {"title": "t", "creatorId": "1", "responsibleId": 1}},
            "creatorId",
        ),
        (
            "tasks.task.add",
            {"fields": {"title": "t", "creatorId": 1, "responsibleId": 1, "deadline": 5}},
            "deadline",
        ),
        ("tasks.task.get", {}, "id"),
        ("tasks.task.get", {"id": "1"}, "id"),
        ("tasks.task.update", {"id": 1, "fields": {"creatorId": 2}}, "creatorId"),
        ("tasks.task.list", {"filter": [["title", "=", "x"]]}, "title"),
    ],
)
def test_task_v3_validation(
    portal: Sandbox, method: str, params: dict[str, Any], field: str
) -> None:
    v3_task(portal)
    body = fails(v3(portal, method, params), 400, V3 + "VALIDATION_REQUESTVALIDATIONEXCEPTION")
    assert body["error"]["validation"][0]["field"] == field


def test_task_v3_unknown_related_field(portal: Sandbox) -> None:
    item = v3_task(portal)
    body = fails(
        v3(portal, "tasks.task.get", {"id": item["id"], "select": ["creator.stageId"]}),
        400,
        V3 + "UNKNOWNDTOPROPERTYEXCEPTION",
    )
    assert body["error"]["message"] == "Unknown field `stageId` for entity `UserDto`"


def test_task_v3_list(portal: Sandbox) -> None:
    ids = [v3_task(portal, title=f"t{i}")["id"] for i in range(6)]
    listed = ok(v3(portal, "tasks.task.list", {}))["items"]
    assert listed == [{"id": i} for i in ids]  # default select: id only, ascending
    params = {
        "select": ["id", "title"],
        "filter": [
            ["id", "in", ids[:5]],
            {"logic": "or", "conditions": [["id", "<=", ids[1]], ["id", ">", ids[3]]]},
        ],
        "order": {"id": "DESC"},
    }
    assert [i["id"] for i in ok(v3(portal, "tasks.task.list", params))["items"]] == [
        ids[4],
        ids[1],
        ids[0],
    ]
    between = {"filter": [["id", "between", [ids[1], ids[2]]]]}
    assert [i["id"] for i in ok(v3(portal, "tasks.task.list", between))["items"]] == ids[1:3]
    paged = {"pagination": {"page": 2, "limit": 4}}
    assert [i["id"] for i in ok(v3(portal, "tasks.task.list", paged))["items"]] == ids[4:]
    fails(
        v3(portal, "tasks.task.list", {"filter": [["id", "like", 1]]}),
        400,
        V3 + "UNKNOWNFILTEROPERATOREXCEPTION",
    )
    fails(
        v3(portal, "tasks.task.list", {"pagination": {"limit": 0}}),
        400,
        V3 + "INVALIDPAGINATIONEXCEPTION",
    )
    fails(
        v3(portal, "tasks.task.list", {"order": {"nope": "ASC"}}), 400, V3 + "INVALIDORDEREXCEPTION"
    )


# --- users and messages -----------------------------------------------------------------------


def test_users(portal: Sandbox) -> None:
    me = ok(portal.rest("user.current"))
    assert me["ID"] == "1" and me["NAME"] == "Admin" and me["ACTIVE"] is True
    everyone = portal.rest("user.get").json()
    assert everyone["total"] == 5 and [u["ID"] for u in everyone["result"]] == list("12345")
    active = ok(portal.rest("user.get", {"FILTER": {"ACTIVE": True}}))
    assert [u["ID"] for u in active] == list("1234")
    assert [u["ID"] for u in ok(portal.rest("user.get", {"ID": 3}))] == ["3"]
    assert [u["ID"] for u in ok(portal.rest("user.get", {"FILTER": {"NAME_SEARCH": "garc"}}))] == [
        "3"
    ]
    ordered = ok(portal.rest("user.get", {"sort": "LAST_NAME", "order": "DESC", "ACTIVE": "Y"}))
    assert [u["LAST_NAME"] for u in ordered] == ["Tanaka", "Smith", "Garcia", ""]
    assert ok(portal.rest("user.get", {"ID": 2, "select": ["EMAIL"]})) == [
        {"ID": "2", "EMAIL": "john.smith@sandbox.local"}
    ]
    profile = ok(portal.rest("profile"))
    assert profile["ID"] == "1" and profile["ADMIN"] is True


def test_im_message_add(portal: Sandbox) -> None:
    chat = ok(portal.rest("im.chat.add", {"TITLE": "Team", "USERS": [2]}))
    first = ok(portal.rest("im.message.add", {"DIALOG_ID": "2", "MESSAGE": "Hello"}))
    second = ok(portal.rest("im.message.add", {"DIALOG_ID": f"chat{chat}", "MESSAGE": "All"}))
    assert isinstance(first, int) and second == first + 1
    stored = portal.admin("messages", {})["messages"]
    assert [(m["dialog_id"], m["text"], m["author_id"]) for m in stored] == [
        ("2", "Hello", 1),
        (f"chat{chat}", "All", 1),
    ]
    # a chat that does not exist: im-message-add.md's CHAT_ID, and nothing is stored
    fails(portal.rest("im.message.add", {"DIALOG_ID": "chat77", "MESSAGE": "x"}), 400, "CHAT_ID")
    assert len(portal.admin("messages", {})["messages"]) == 2
    fails(portal.rest("im.message.add", {"DIALOG_ID": "2", "MESSAGE": " "}), 400, "MESSAGE_EMPTY")
    fails(portal.rest("im.message.add", {"DIALOG_ID": "99", "MESSAGE": "x"}), 400, "USER_NOT_FOUND")
    fails(portal.rest("im.message.add", {"MESSAGE": "x"}), 400, "USER_ID_EMPTY")


# --- event bindings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "event.bind",
        "event.unbind",
        "event.get",
        "events",
        "event.offline.get",
        "event.offline.list",
        "event.offline.clear",
        "event.offline.error",
    ],
)
def test_event_methods_refuse_webhooks(portal: Sandbox, method: str) -> None:
    fails(
        portal.rest(method, {"event": "ONCRMLEADADD", "handler": "http://127.0.0.1/"}),
        403,
        "WRONG_AUTH_TYPE",
    )


def test_bind_get_unbind(portal: Sandbox) -> None:
    hook = "http://127.0.0.1:9/hook"
    assert ok(app(portal, "event.bind", {"event": "onCrmLeadAdd", "handler": hook})) is True
    bind_offline(portal, "ONCRMDEALUPDATE", connector="erp")
    assert ok(app(portal, "event.get")) == [
        {"event": "ONCRMLEADADD", "handler": hook, "auth_type": "0", "offline": 0},
        {"event": "ONCRMDEALUPDATE", "connector_id": "erp", "offline": 1},
    ]
    body = fails(
        app(portal, "event.bind", {"event": "ONCRMLEADADD", "handler": hook}), 400, "ERROR_CORE"
    )
    assert "Handler already binded" in body["error_description"]
    fails(
        app(portal, "event.bind", {"event": "ONNOTHING", "handler": hook}),
        400,
        "ERROR_EVENT_NOT_FOUND",
    )
    fails(app(portal, "event.bind", {"event": "ONCRMLEADADD"}), 400, "ERROR_ARGUMENT")
    fails(
        app(portal, "event.bind", {"event": "ONOFFLINEEVENT", "event_type": "offline"}),
        400,
        "ERROR_ARGUMENT",
    )
    unbind = {"event": "ONCRMLEADADD", "handler": hook}
    assert ok(app(portal, "event.unbind", unbind)) == {"count": 1}
    assert ok(app(portal, "event.unbind", unbind)) == {"count": 0}
    offline = {"event": "ONCRMDEALUPDATE", "event_type": "offline", "auth_connector": "erp"}
    assert ok(app(portal, "event.unbind", offline)) == {"count": 1}
    assert ok(app(portal, "event.get")) == []


def test_events_lists_by_scope(portal: Sandbox) -> None:
    names = ok(app(portal, "events"))
    assert {"ONCRMLEADADD", "ONTASKUPDATE", "ONOFFLINEEVENT"} <= set(names)
    assert ok(app(portal, "events", {"SCOPE": "task"})) == [
        "ONTASKADD",
        "ONTASKUPDATE",
        "ONTASKDELETE",
    ]
    portal.admin("settings", {"app_scopes": ["task"]})
    assert "ONCRMLEADADD" not in ok(app(portal, "events"))
    fails(
        app(portal, "event.bind", {"event": "ONCRMLEADADD", "event_type": "offline"}),
        400,
        "ERROR_EVENT_NOT_FOUND",
    )


# --- online delivery -------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode()
        self.server.received.append((self.path, self.headers.get("Content-Type"), body))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_online_event_reaches_local_handler(portal: Sandbox, receiver: Any) -> None:
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/b24/hook"
    ok(app(portal, "event.bind", {"event": "ONCRMLEADADD", "handler": hook}))
    lead_id = add(portal, "lead", TITLE="ping")
    delivered = portal.admin("events-delivered", {"wait": 10})
    assert delivered["idle"] is True
    assert [(d["event"], d["status"]) for d in delivered["deliveries"]] == [("ONCRMLEADADD", 200)]
    [(path, ctype, body)] = receiver.received
    form = {k: v[0] for k, v in parse_qs(body).items()}
    assert path == "/b24/hook" and ctype == "application/x-www-form-urlencoded"
    assert form["event"] == "ONCRMLEADADD" and form["data[FIELDS][ID]"] == str(lead_id)
    assert form["auth[application_token]"] == portal.oauth["application_token"]
    assert form["auth[member_id]"] == portal.oauth["member_id"]
    assert form["event_handler_id"].isdigit() and form["ts"].isdigit()
    assert form["auth[client_endpoint]"] == f"{portal.url}/rest/"
    assert "auth[access_token]" not in form and "auth[refresh_token]" not in form


def test_the_queue_notice_carries_a_working_token_pair(portal: Sandbox, receiver: Any) -> None:
    """on-offline-event.md shows ONOFFLINEEVENT with access and refresh tokens, and
    events/index.md says the refresh token comes with it: the notice hands the app a pair."""
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/"
    ok(app(portal, "event.bind", {"event": "ONOFFLINEEVENT", "handler": hook}))
    bind_offline(portal, "ONCRMLEADADD")
    add(portal, "lead", TITLE="queued")
    assert portal.admin("events-delivered", {"wait": 10})["idle"] is True
    [(_, _, body)] = receiver.received
    form = {k: v[0] for k, v in parse_qs(body).items()}
    assert form["event"] == "ONOFFLINEEVENT"
    assert form["auth[application_token]"] == portal.oauth["application_token"]
    access, refresh = form["auth[access_token]"], form["auth[refresh_token]"]
    assert access != portal.oauth["access_token"] and int(form["auth[expires_in]"]) > 0
    with_notice_token = {"auth": access}
    answer = portal.session.post(f"{portal.url}/rest/profile", json=with_notice_token, timeout=30)
    assert ok(answer)["ID"]
    grant = {
        "grant_type": "refresh_token",
        "client_id": portal.oauth["client_id"],
        "client_secret": portal.oauth["client_secret"],
        "refresh_token": refresh,
    }
    renewed = portal.session.get(f"{portal.url}/oauth/token/", params=grant, timeout=30)
    assert renewed.status_code == 200 and renewed.json()["refresh_token"] != refresh


def test_online_delivery_is_never_retried(portal: Sandbox, receiver: Any) -> None:
    receiver.status = 500
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/"
    ok(app(portal, "event.bind", {"event": "ONCRMDEALADD", "handler": hook}))
    add(portal, "deal", TITLE="d")
    delivered = portal.admin("events-delivered", {"wait": 10})
    assert [d["status"] for d in delivered["deliveries"]] == [500]
    assert len(receiver.received) == 1


def test_online_delivery_only_to_loopback(portal: Sandbox) -> None:
    ok(app(portal, "event.bind", {"event": "ONCRMLEADADD", "handler": "http://203.0.113.9/h"}))
    add(portal, "lead", TITLE="x")
    [delivery] = portal.admin("events-delivered", {"wait": 10})["deliveries"]
    assert delivery["status"] is None and "loopback" in delivery["error"]


# --- offline queue ---------------------------------------------------------------------------


def test_crm_changes_queue_offline_rows_and_merge(portal: Sandbox) -> None:
    for event in ("ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE"):
        bind_offline(portal, event)
    lead_id = add(portal, "lead", TITLE="a")
    other = add(portal, "lead", TITLE="b")
    for title in ("c", "d", "e"):
        ok(portal.rest("crm.lead.update", {"id": lead_id, "fields": {"TITLE": title}}))
    item = {"entityTypeId": 1, "id": other, "fields": {"title": "f"}}
    ok(portal.rest("crm.item.update", item))
    ok(portal.rest("crm.item.delete", {"entityTypeId": 1, "id": other}))
    rows = offline_list(portal)
    assert [(r["EVENT_NAME"], r["EVENT_DATA"]) for r in rows] == [
        ("ONCRMLEADADD", {"FIELDS": {"ID": lead_id}}),
        ("ONCRMLEADADD", {"FIELDS": {"ID": other}}),
        ("ONCRMLEADUPDATE", {"FIELDS": {"ID": lead_id}}),  # three updates, one row
        ("ONCRMLEADUPDATE", {"FIELDS": {"ID": other}}),
        ("ONCRMLEADDELETE", {"FIELDS": {"ID": other}}),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["MESSAGE_ID"]) for r in rows)
    assert len({r["MESSAGE_ID"] for r in rows}) == 5
    assert all(r["PROCESS_ID"] == "" and r["ERROR"] == "0" for r in rows)
    assert rows[0]["EVENT_ADDITIONAL"] == {"user_id": 1} and ISO.match(rows[0]["TIMESTAMP_X"])


def test_task_changes_queue_offline_rows(portal: Sandbox) -> None:
    for event in ("ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE"):
        bind_offline(portal, event)
    task_id = int(
        ok(portal.rest("tasks.task.add", {"fields": {"TITLE": "t", "RESPONSIBLE_ID": 1}}))["task"][
            "id"
        ]
    )
    ok(portal.rest("tasks.task.complete", {"taskId": task_id}))
    ok(v3(portal, "tasks.task.delete", {"id": task_id}))
    data = {r["EVENT_NAME"]: r["EVENT_DATA"] for r in offline_list(portal)}
    assert data["ONTASKADD"] == {
        "FIELDS_BEFORE": "undefined",
        "FIELDS_AFTER": {"ID": task_id},
        "IS_ACCESSIBLE_BEFORE": "N",
        "IS_ACCESSIBLE_AFTER": "undefined",
    }
    assert data["ONTASKUPDATE"]["FIELDS_AFTER"] == {"ID": task_id}
    assert data["ONTASKDELETE"]["FIELDS_BEFORE"] == {"ID": task_id}


def test_no_binding_no_rows(portal: Sandbox) -> None:
    add(portal, "lead", TITLE="unwatched")
    assert offline_list(portal) == []


def test_get_clear_default_deletes_at_once(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 7})
    got = offline_get(portal, limit=5)
    assert got["process_id"] is None and len(got["events"]) == 5
    assert set(got["events"][0]) == {
        "ID",
        "TIMESTAMP_X",
        "EVENT_NAME",
        "EVENT_DATA",
        "EVENT_ADDITIONAL",
        "MESSAGE_ID",
    }
    assert len(offline_list(portal)) == 2
    assert len(offline_get(portal)["events"]) == 2 and offline_list(portal) == []


def test_reserved_rows_return_only_to_their_process(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 8})
    first = offline_get(portal, clear=0, limit=5)
    process_id = first["process_id"]
    assert re.fullmatch(r"[0-9A-Za-z]{32}", process_id)
    reserved = [e["ID"] for e in first["events"]]
    listed = offline_list(portal)
    assert [r["ID"] for r in listed if r["PROCESS_ID"] == process_id] == reserved
    other = offline_get(portal, clear=0)
    assert other["process_id"] != process_id
    assert not set(reserved) & {e["ID"] for e in other["events"]}
    assert offline_get(portal, clear=0)["events"] == []  # everything is reserved now
    again = offline_get(portal, clear=0, process_id=process_id)
    assert again["process_id"] == process_id and [e["ID"] for e in again["events"]] == reserved
    assert ok(app(portal, "event.offline.clear", {"process_id": process_id})) is True
    assert {r["PROCESS_ID"] for r in offline_list(portal)} == {other["process_id"]}


def test_change_after_reservation_queues_a_fresh_row(portal: Sandbox) -> None:
    bind_offline(portal, "ONCRMLEADUPDATE")
    lead_id = add(portal, "lead", TITLE="v1")
    ok(portal.rest("crm.lead.update", {"id": lead_id, "fields": {"TITLE": "v2"}}))
    reserved = offline_get(portal, clear=0)
    ok(portal.rest("crm.lead.update", {"id": lead_id, "fields": {"TITLE": "v3"}}))
    rows = offline_list(portal)
    assert [r["PROCESS_ID"] for r in rows] == [reserved["process_id"], ""]
    assert rows[0]["MESSAGE_ID"] == rows[1]["MESSAGE_ID"]  # same object, not merged away
    ok(app(portal, "event.offline.clear", {"process_id": reserved["process_id"]}))
    assert [r["PROCESS_ID"] for r in offline_list(portal)] == [""]


def test_parallel_reservations_are_disjoint(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 300})

    def reserve(_: int) -> dict[str, Any]:
        return offline_get(portal, clear=0, limit=50)

    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(reserve, range(8)))
    ids = [e["ID"] for b in batches for e in b["events"]]
    assert len({b["process_id"] for b in batches}) == 8
    assert len(ids) == len(set(ids)) == 300
    assert sorted(len(b["events"]) for b in batches) == [0, 0, 50, 50, 50, 50, 50, 50]


def test_clear_zero_needs_the_extended_feature(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 3})
    portal.admin("settings", {"features": []})
    fails(app(portal, "event.offline.get", {"clear": 0}), 403, "WRONG_LICENSE")
    assert len(offline_list(portal)) == 3  # the refused call reserved nothing
    assert len(offline_get(portal, clear=1)["events"]) == 3


def test_error_flagging_releases_rows_to_the_error_lane(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 4})
    batch = offline_get(portal, clear=0)
    bad = [e["MESSAGE_ID"] for e in batch["events"][:2]]
    params = {"process_id": batch["process_id"], "message_id": bad}
    assert ok(app(portal, "event.offline.error", params)) is True
    state = {r["MESSAGE_ID"]: (r["PROCESS_ID"], r["ERROR"]) for r in offline_list(portal)}
    assert [state[m] for m in bad] == [("", "1"), ("", "1")]
    assert offline_get(portal, clear=0)["events"] == []  # the good rows are still reserved
    errors = offline_get(portal, clear=0, error=1)
    assert sorted(e["MESSAGE_ID"] for e in errors["events"]) == sorted(bad)
    assert len(ok(app(portal, "event.offline.list", {"filter": {"ERROR": 1}}))) == 2


def test_clear_by_id_message_id_or_all(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 6})
    batch = offline_get(portal, clear=0)
    pid, events = batch["process_id"], batch["events"]
    by_id = {"process_id": pid, "id": [events[0]["ID"]], "message_id": [events[1]["MESSAGE_ID"]]}
    ok(app(portal, "event.offline.clear", by_id))  # id wins; message_id is ignored
    assert len(offline_list(portal)) == 5
    ok(
        app(
            portal,
            "event.offline.clear",
            {"process_id": pid, "message_id": [events[1]["MESSAGE_ID"]]},
        )
    )
    assert len(offline_list(portal)) == 4
    ok(app(portal, "event.offline.clear", {"process_id": "someone-else"}))
    assert len(offline_list(portal)) == 4
    ok(app(portal, "event.offline.clear", {"process_id": pid}))
    assert offline_list(portal) == []
    fails(app(portal, "event.offline.clear", {}), 400, "ERROR_ARGUMENT")
    fails(
        app(portal, "event.offline.clear", {"process_id": pid, "message_id": ["short"]}),
        400,
        "ERROR_ARGUMENT",
    )


def test_get_filter_order_and_limit(portal: Sandbox) -> None:
    portal.admin("seed", {"event.offline": 10})
    got = offline_get(portal, clear=0, limit=3, order={"ID": "DESC"}, filter={"<ID": 9})
    assert [e["ID"] for e in got["events"]] == ["8", "7", "6"]
    fails(app(portal, "event.offline.get", {"limit": 0}), 400, "ERROR_ARGUMENT")
    page = app(portal, "event.offline.list", {"start": -1}).json()
    assert page["total"] == 0 and "next" not in page and len(page["result"]) == 10


def test_own_changes_through_the_bound_connector_are_not_queued(portal: Sandbox) -> None:
    bind_offline(portal, "ONCRMLEADADD", connector="sync")
    own = {"fields": {"TITLE": "own"}, "auth_connector": "sync"}
    ok(app(portal, "crm.lead.add", own))  # the app itself, through its connector: skipped
    app_elsewhere = int(ok(app(portal, "crm.lead.add", {"fields": {"TITLE": "app, no connector"}})))
    by_webhook = add(portal, "lead", TITLE="webhook")
    queued = ok(app(portal, "event.offline.list", {"auth_connector": "sync"}))
    assert [r["EVENT_DATA"]["FIELDS"]["ID"] for r in queued] == [app_elsewhere, by_webhook]
    assert offline_list(portal) == []  # the connector's queue is its own


def test_own_changes_without_a_connector_are_queued(portal: Sandbox) -> None:
    """offline-events.md, "How to Avoid Cycles": the app's own update "adds an event back to the
    queue"; only a matching auth_connector keeps it out."""
    bind_offline(portal, "ONCRMLEADADD")
    own = int(ok(app(portal, "crm.lead.add", {"fields": {"TITLE": "the app itself"}})))
    assert [r["EVENT_DATA"]["FIELDS"]["ID"] for r in offline_list(portal)] == [own]


def test_offline_methods_need_an_admin(portal: Sandbox) -> None:
    portal.admin("settings", {"oauth_user_id": 2})  # user 2 is not an administrator
    for method in (
        "event.offline.get",
        "event.offline.list",
        "event.offline.clear",
        "event.offline.error",
    ):
        fails(app(portal, method, {"process_id": "x", "message_id": []}), 403, "ACCESS_DENIED")
    fails(
        app(portal, "event.bind", {"event": "ONCRMLEADADD", "event_type": "offline"}),
        403,
        "ACCESS_DENIED",
    )


# --- concurrency and volume ------------------------------------------------------------------


def test_concurrent_adds_leave_exact_counts(portal: Sandbox) -> None:
    bind_offline(portal, "ONCRMLEADADD")

    def one(i: int) -> int:
        with requests.Session() as session:
            url = portal.webhook_url + "crm.lead.add"
            response = session.post(url, json={"fields": {"TITLE": f"t{i}"}}, timeout=60)
            return int(ok(response))

    with ThreadPoolExecutor(max_workers=200) as pool:
        ids = list(pool.map(one, range(200)))
    assert sorted(ids) == list(range(1, 201))
    assert portal.rest("crm.lead.list", {"select": ["ID"]}).json()["total"] == 200
    queue = app(portal, "event.offline.list", {}).json()
    assert queue["total"] == 200


def test_seed_refuses_unknown_kinds(portal: Sandbox) -> None:
    response = portal.session.post(
        f"{portal.url}/_sandbox/seed",
        json={"crm.lead": 3, "crm.nothing": 1},
        headers={"X-Sandbox-Admin": portal.admin_token},
        timeout=30,
    )
    fails(response, 400, "ERROR_ARGUMENT")
    assert ok(portal.rest("crm.lead.list", {})) == []


def test_seed_five_thousand_leads(portal: Sandbox) -> None:
    assert portal.admin("seed", {"crm.lead": 5000, "crm.company": 10}) == {
        "crm.lead": 5000,
        "crm.company": 10,
    }
    body = portal.rest("crm.lead.list", {"select": ["ID", "TITLE"], "start": 4950}).json()
    assert body["total"] == 5000 and body["result"][-1] == {"ID": "5000", "TITLE": "Lead #5000"}
    assert offline_list(portal) == []  # seeding raises no events


# --- the store itself: what HTTP cannot show ---------------------------------------------------


def test_store_rollback_drops_rows_and_commit_callbacks() -> None:
    store, fired = Store(None), []
    with pytest.raises(RuntimeError), store.transaction():
        store.insert("crm_lead", {"TITLE": "half"})
        store.on_commit(lambda: fired.append("late"))
        raise RuntimeError("handler failed midway")
    assert store.count("crm_lead") == 0 and fired == []
    with store.transaction():
        with store.transaction():
            store.insert("crm_lead", {"TITLE": "inner"})
            store.on_commit(lambda: fired.append("after outer commit"))
        assert fired == []  # the inner block joined the outer transaction
    assert fired == ["after outer commit"] and store.count("crm_lead") == 1


def test_store_file_survives_reopening(tmp_path: Any) -> None:
    path = str(tmp_path / "portal.sqlite")
    first = Store(path)
    lead_id = first.insert("crm_lead", {"TITLE": "kept"})
    first.close()
    again = Store(path)
    assert again.get("crm_lead", lead_id) == {"ID": lead_id, "TITLE": "kept"}
    assert again.count("users") == 5


_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "": lambda a, b: a == b,
    "!": lambda a, b: a != b,
    "@": lambda a, b: a in b,
    "!@": lambda a, b: a not in b,
    "%": lambda a, b: b.lower() in a.lower(),
}


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-5, 5), st.text("ab_%", min_size=0, max_size=3)),
        min_size=0,
        max_size=8,
    ),
    conditions=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from([">=", ">", "<=", "<", "", "!"]),
                st.just("OPPORTUNITY"),
                st.integers(-5, 5),
            ),
            st.tuples(
                st.sampled_from(["@", "!@"]),
                st.just("OPPORTUNITY"),
                st.lists(st.integers(-5, 5), min_size=1, max_size=3),
            ),
            st.tuples(st.just("%"), st.just("TITLE"), st.text("ab_%", min_size=1, max_size=2)),
        ),
        max_size=3,
        unique_by=lambda c: c[0] + c[1],
    ),
)
def test_filter_compiler_matches_a_reference(
    rows: list[tuple[int, str]], conditions: list[tuple[str, str, Any]]
) -> None:
    """Any AND of v2 conditions selects exactly the rows Python's own comparison selects."""
    store = Store(None)
    ids = [store.insert("crm_lead", {"OPPORTUNITY": float(o), "TITLE": t}) for o, t in rows]
    filter_ = {op + field: value for op, field, value in conditions}
    where = filters.compile_filter(filter_, lambda n: crm_model.v2_column(crm_fields.LEAD, n))
    found, _ = store.select("crm_lead", Query(*where, limit=None))
    expected = [
        record_id
        for record_id, (opportunity, title) in zip(ids, rows, strict=True)
        if all(
            _OPS[op](title if field == "TITLE" else opportunity, value)
            for op, field, value in conditions
        )
    ]
    assert [r["ID"] for r in found] == expected
