"""The methods the skill recommends that the sandbox lacked (issue 17): CRM stage lists and
activities, reading chats, app storage, consents, landing pages, catalog products and product
rows. Each test pins the answer's shape and the errors its docs page gives, over plain HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
from b24agent import catalog
from b24agent.sandbox import methods  # noqa: F401  (registers every handler)
from b24agent.sandbox.registry import all_methods
from conftest import Sandbox
from test_sandbox_areas import call, ok

MODULES = ("crm_lookups", "dialogs", "storage", "sites", "commerce")


def error(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> str:
    body = call(portal, method, params)
    assert "error" in body, (method, body)
    return body["error"]


def app(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call as the OAuth app, the token in the ``auth`` field."""
    body = {**(params or {}), "auth": portal.oauth["access_token"]}
    return portal.session.post(f"{portal.url}/rest/{method}", json=body, timeout=30).json()


def test_every_new_method_is_in_the_catalog_with_its_documented_scope() -> None:
    specs = [s for s in all_methods("v2") if s.handler.__module__.rsplit(".", 1)[-1] in MODULES]
    assert len(specs) == 20
    for spec in specs:
        info = catalog.lookup(spec.name)
        assert info is not None, spec.name
        assert spec.scope in str(info.scope).split(","), (spec.name, info.scope)


# --- CRM ----------------------------------------------------------------------------------------


def test_crm_status_list_and_entity_items(portal: Sandbox) -> None:
    body = call(portal, "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}})
    stages = body["result"]
    assert body["total"] == len(stages) == 8
    assert [s["STATUS_ID"] for s in stages][:2] == ["NEW", "PREPARATION"]
    won = next(s for s in stages if s["STATUS_ID"] == "WON")
    assert won["EXTRA"] == {"SEMANTICS": "success", "COLOR": won["COLOR"]}
    assert isinstance(won["ID"], str) and isinstance(won["SORT"], str)
    assert won["CATEGORY_ID"] is None and won["SYSTEM"] == "Y"
    backwards = ok(
        portal, "crm.status.list", {"order": {"SORT": "DESC"}, "filter": {"ENTITY_ID": "STATUS"}}
    )
    assert backwards[0]["STATUS_ID"] == "JUNK"
    items = ok(portal, "crm.status.entity.items", {"entityId": "DEAL_STAGE"})
    assert items[0] == {"NAME": "New", "SORT": 10, "STATUS_ID": "NEW"}
    assert error(portal, "crm.status.entity.items", {"entityId": "NOPE"}).startswith(
        "The parameter entityId"
    )
    # every stage a deal can take is one the directory lists
    deal = ok(
        portal, "crm.deal.add", {"fields": {"TITLE": "d", "STAGE_ID": stages[3]["STATUS_ID"]}}
    )
    assert ok(portal, "crm.deal.get", {"id": deal})["STAGE_SEMANTIC_ID"] == "P"


def test_crm_activity_add_and_list(portal: Sandbox) -> None:
    deal = ok(portal, "crm.deal.add", {"fields": {"TITLE": "Called"}})
    call_fields = {
        "OWNER_TYPE_ID": 2,
        "OWNER_ID": deal,
        "TYPE_ID": 2,
        "SUBJECT": "Call with Anna",
        "RESPONSIBLE_ID": 1,
        "COMMUNICATIONS": [{"VALUE": "+4930123", "ENTITY_TYPE_ID": 3, "ENTITY_ID": 1}],
        "FILES": [{"id": 7, "name": "recording.mp3"}],
    }
    first = ok(portal, "crm.activity.add", {"fields": call_fields})
    second = ok(portal, "crm.activity.add", {"fields": {**call_fields, "TYPE_ID": 1}})
    assert error(portal, "crm.activity.add", {"fields": {"OWNER_ID": deal}}) == "ERROR_ARGUMENT"
    filter_ = {"OWNER_TYPE_ID": 2, "OWNER_ID": deal, "TYPE_ID": 2}
    body = call(portal, "crm.activity.list", {"filter": filter_, "order": {"ID": "DESC"}})
    (row,) = body["result"]
    assert body["total"] == 1 and "next" not in body
    assert row["ID"] == str(first) and row["PROVIDER_ID"] == "VOXIMPLANT_CALL"
    assert "FILES" not in row and "COMMUNICATIONS" not in row  # only when selected
    picked = ok(portal, "crm.activity.list", {"select": ["ID", "FILES"], "order": {"ID": "DESC"}})
    assert [r["ID"] for r in picked] == [str(second), str(first)]
    assert set(picked[0]) == {"ID", "FILES"}


# --- chats ----------------------------------------------------------------------------------


def test_dialog_get_messages_recent_and_search(portal: Sandbox) -> None:
    chat = ok(portal, "im.chat.add", {"TITLE": "Launch team", "USERS": [2]})
    for text in ("one", "two", "three"):
        ok(portal, "im.message.add", {"DIALOG_ID": f"chat{chat}", "MESSAGE": text})
    ok(portal, "im.message.add", {"DIALOG_ID": "3", "MESSAGE": "hi Carl"})

    dialog = ok(portal, "im.dialog.get", {"DIALOG_ID": f"chat{chat}"})
    assert (dialog["id"], dialog["name"], dialog["dialog_id"]) == (
        chat,
        "Launch team",
        f"chat{chat}",
    )
    assert (
        dialog["user_counter"] == 2 and dialog["message_count"] == 3 and dialog["role"] == "owner"
    )
    assert dialog["restrictions"]["send"] is True and dialog["manager_list"] == [1]
    private = ok(portal, "im.dialog.get", {"DIALOG_ID": "3"})
    assert private["type"] == "private" and private["message_count"] == 1
    assert ok(portal, "im.dialog.get", {"DIALOG_ID": "3"})["id"] == private["id"]  # kept

    got = ok(portal, "im.dialog.messages.get", {"DIALOG_ID": f"chat{chat}", "LIMIT": 2})
    assert got["chat_id"] == chat and [m["text"] for m in got["messages"]] == ["three", "two"]
    older = ok(
        portal,
        "im.dialog.messages.get",
        {"DIALOG_ID": f"chat{chat}", "LAST_ID": got["messages"][-1]["id"]},
    )
    assert [m["text"] for m in older["messages"]] == ["one"]
    assert got["users"][0]["id"] == 1 and got["files"] == []
    assert error(
        portal, "im.dialog.messages.get", {"DIALOG_ID": f"chat{chat}", "LAST_ID": "x"}
    ) == ("LAST_ID_STRING")

    body = call(portal, "im.recent.list", {})
    recent = body["result"]
    assert body["total"] == -1 and recent["hasMore"] is False
    assert [i["id"] for i in recent["items"]] == [3, f"chat{chat}"]  # latest activity first
    assert recent["items"][1]["message"]["text"] == "three"
    only_chats = ok(portal, "im.recent.list", {"SKIP_DIALOG": "Y"})["items"]
    assert [i["type"] for i in only_chats] == ["chat"]

    found = call(portal, "im.search.chat.list", {"FIND": "launch"})
    assert found["total"] == 1 and found["result"][0]["id"] == chat
    assert error(portal, "im.search.chat.list", {"FIND": "l"}) == "FIND_SHORT"


def test_chats_the_caller_may_not_read_and_missing_chats(portal: Sandbox) -> None:
    theirs = int(ok(portal, "im.chat.add", {"TITLE": "Not mine", "USERS": [3]}))
    assert error(portal, "im.dialog.get", {"DIALOG_ID": ""}) == "DIALOG_ID_EMPTY"
    response = portal.rest("im.dialog.get", {"DIALOG_ID": "chat999"})
    assert response.status_code == 403 and response.json()["error"] == "ACCESS_ERROR"
    # a message to a chat that does not exist fails as im-message-add.md says
    assert error(portal, "im.message.add", {"DIALOG_ID": "chat999", "MESSAGE": "x"}) == "CHAT_ID"
    assert portal.admin("messages", {"dialog_id": "chat999"})["messages"] == []
    portal.admin("settings", {"oauth_user_id": 2})
    other = app(portal, "im.message.add", {"DIALOG_ID": f"chat{theirs}", "MESSAGE": "x"})
    assert other["error"] == "ACCESS_ERROR"


# --- app storage and consents ------------------------------------------------------------------


def test_entity_storage_belongs_to_the_app(portal: Sandbox) -> None:
    assert error(portal, "entity.add", {"ENTITY": "marks", "NAME": "Marks"}) == "ACCESS_DENIED"
    assert app(portal, "entity.add", {"ENTITY": "marks", "NAME": "Marks"})["result"] is True
    again = app(portal, "entity.add", {"ENTITY": "marks", "NAME": "Marks"})
    assert again["error"] == "ERROR_ENTITY_ALREADY_EXISTS"
    too_long = app(portal, "entity.add", {"ENTITY": "x" * 14, "NAME": "Long"})
    assert too_long["error"] == "ERROR_ARGUMENT"
    first = app(portal, "entity.item.add", {"ENTITY": "marks", "NAME": "deals:1"})["result"]
    app(portal, "entity.item.add", {"ENTITY": "marks", "NAME": "leads:1"})
    body = app(portal, "entity.item.get", {"ENTITY": "marks", "FILTER": {"%NAME": "deals"}})
    (item,) = body["result"]
    assert body["total"] == 1 and item["ID"] == str(first) and item["ENTITY"] == "marks"
    assert item["ACTIVE"] == "Y" and item["SORT"] == "500" and item["CREATED_BY"] == "1"
    missing = app(portal, "entity.item.get", {"ENTITY": "nope"})
    assert missing["error"] == "ERROR_ENTITY_NOT_FOUND"


def test_consents(portal: Sandbox) -> None:
    agreements = ok(portal, "userconsent.agreement.list")
    assert {"ID", "NAME", "ACTIVE", "LANGUAGE_ID"} == set(agreements[0])
    given = {"AGREEMENT_ID": agreements[0]["ID"], "IP": "203.0.113.7", "ORIGINATOR_ID": "f-1"}
    assert isinstance(ok(portal, "userconsent.consent.add", given), int)
    assert error(portal, "userconsent.consent.add", {**given, "AGREEMENT_ID": 999}) == (
        "ERROR_ARGUMENT"
    )
    assert error(portal, "userconsent.consent.add", {**given, "IP": "nope"}) == "ERROR_ARGUMENT"


# --- sites and commerce -----------------------------------------------------------------------


def test_landing_pages_publish_and_public_url(portal: Sandbox) -> None:
    params = {"params": {"select": ["ID", "TITLE", "ACTIVE"], "filter": {"ACTIVE": "N"}}}
    (draft,) = ok(portal, "landing.landing.getList", params)
    assert set(draft) == {"ID", "TITLE", "ACTIVE"}
    assert ok(portal, "landing.landing.publication", {"lid": draft["ID"]}) is True
    assert ok(portal, "landing.landing.getList", params) == []
    url = ok(portal, "landing.landing.getpublicurl", {"lid": draft["ID"]})
    assert url.startswith("https://") and url.endswith("/spring-sale/")
    both = ok(portal, "landing.landing.getpublicurl", {"lid": [1, draft["ID"], 99]})
    assert set(both) == {"1", draft["ID"]}
    assert error(portal, "landing.landing.publication", {"lid": 99}) == "LANDING_NOT_EXIST"
    assert error(portal, "landing.landing.publication", {}) == "MISSING_PARAMS"


def test_catalog_products_and_product_rows(portal: Sandbox) -> None:
    added = ok(portal, "catalog.product.add", {"fields": {"iblockId": 14, "name": "Seat"}})
    product = added["element"]
    assert product["name"] == "Seat" and product["iblockId"] == 14
    query = {"select": ["id", "iblockId", "name"], "filter": {"iblockId": 14, "%name": "sea"}}
    body = call(portal, "catalog.product.list", query)
    assert body["result"] == {"products": [{"id": product["id"], "iblockId": 14, "name": "Seat"}]}
    assert body["total"] == 1
    no_iblock = {"select": ["id", "iblockId"], "filter": {}}
    assert error(portal, "catalog.product.list", no_iblock) == "ERROR_ARGUMENT"

    deal = ok(portal, "crm.deal.add", {"fields": {"TITLE": "Quoted"}})
    fields = {"ownerType": "D", "ownerId": deal, "productId": product["id"], "price": 90}
    row = ok(portal, "crm.item.productrow.add", {"fields": {**fields, "quantity": 2}})["productRow"]
    assert row["productName"] == "Seat" and row["quantity"] == 2 and row["ownerType"] == "D"
    listed = ok(
        portal, "crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": deal}}
    )
    assert [r["id"] for r in listed["productRows"]] == [row["id"]]
    assert error(portal, "crm.item.productrow.list", {"filter": {"=ownerId": deal}}) == (
        "ERROR_ARGUMENT"
    )
    assert error(portal, "crm.item.productrow.add", {"fields": {**fields, "ownerId": 999}}) == (
        "NOT_FOUND"
    )


@pytest.mark.parametrize("method", ["crm.status.list", "im.recent.list", "entity.item.get"])
def test_new_methods_check_their_scope(portal: Sandbox, method: str) -> None:
    portal.admin("settings", {"webhook_scopes": ["user"]})
    assert error(portal, method) == "insufficient_scope"
