"""The sandbox areas the chains need beyond CRM and tasks: timeline comments, checklists, chats and
notifications, calendar, workgroups, feed, business processes, deal contacts, Drive, bots, scrum
and duplicate search. test_chains.py covers their happy paths through the CLI; this file pins
the rules and errors their docs pages give, over plain HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
from b24agent import catalog
from b24agent.sandbox import methods  # noqa: F401  (registers every handler)
from b24agent.sandbox.config import DEFAULT_SCOPES
from b24agent.sandbox.registry import all_methods
from conftest import Sandbox

#: The modules this file covers, by the names their handlers are registered from.
AREAS = (
    "bizproc",
    "calendar",
    "chats",
    "checklist",
    "deal_contacts",
    "disk",
    "duplicates",
    "feed",
    "imbot",
    "scrum",
    "sonet",
    "timeline",
)
#: Where the docs pages' scope label is not a scope a webhook can hold (scopes/permissions.md
#: lists ``sonet_group`` as the code; the method pages say ``sonet``).
SCOPE_ALIASES = {"sonet": "sonet_group"}


def call(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one webhook call (success or error)."""
    return portal.rest(method, params or {}).json()


def ok(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> Any:
    body = call(portal, method, params)
    assert "error" not in body, (method, body)
    return body["result"]


def error(portal: Sandbox, method: str, params: dict[str, Any] | None = None) -> tuple[str, str]:
    body = call(portal, method, params)
    assert "error" in body, (method, body)
    return body["error"], body["error_description"]


def oauth_call(portal: Sandbox, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {**params, "auth": portal.oauth["access_token"]}
    response = portal.session.post(f"{portal.url}/rest/{method}", json=body)
    return response.json()


def _area_specs() -> list[Any]:
    return [s for s in all_methods("v2") if s.handler.__module__.rsplit(".", 1)[-1] in AREAS]


def test_every_new_method_checks_a_real_scope_per_the_docs() -> None:
    """Fail closed: no new handler is scope-free, and each checks the docs' scope."""
    specs = _area_specs()
    assert len(specs) >= 50
    for spec in specs:
        info = catalog.lookup(spec.name)
        assert info is not None and spec.scope in DEFAULT_SCOPES, spec
        documented = {SCOPE_ALIASES.get(s, s) for s in str(info.scope).split(",")}
        assert spec.scope in documented, (spec.name, info.scope)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("im.chat.add", {"TITLE": "x"}),
        ("calendar.event.getbyid", {"id": 1}),
        ("sonet_group.get", {}),
        ("log.blogpost.get", {}),
        ("bizproc.workflow.template.list", {}),
        ("disk.storage.getlist", {}),
        ("imbot.v2.Event.get", {"botId": 1}),
        ("task.checklistitem.getlist", {"TASKID": 1}),
    ],
)
def test_a_webhook_without_the_scope_is_refused(
    portal: Sandbox, method: str, params: dict[str, Any]
) -> None:
    portal.admin("settings", {"webhook_scopes": ["crm", "user"]})
    response = portal.rest(method, params)
    assert response.status_code in (401, 403)
    assert response.json()["error"] == "insufficient_scope"


def test_timeline_comment_rules(portal: Sandbox) -> None:
    deal = ok(portal, "crm.deal.add", {"fields": {"TITLE": "T"}})
    owner = {"ENTITY_TYPE": "deal", "ENTITY_ID": deal}
    assert (
        error(portal, "crm.timeline.comment.add", {"fields": {**owner, "ENTITY_ID": 999}})[0]
        == "OWNER_NOT_FOUND"
    )
    assert error(portal, "crm.timeline.comment.add", {"fields": {**owner, "COMMENT": " "}}) == (
        "INVALID_ARG_VALUE",
        "Empty comment",
    )
    bad_file = {**owner, "COMMENT": "c", "FILES": [["a.txt", "not base64!"]]}
    assert error(portal, "crm.timeline.comment.add", {"fields": bad_file})[0] == "ERROR_ARGUMENT"
    # Since crm 23.100 only the lower-case "fields" key is read.
    assert error(portal, "crm.timeline.comment.add", {"FIELDS": {**owner, "COMMENT": "c"}})
    first = ok(portal, "crm.timeline.comment.add", {"fields": {**owner, "COMMENT": "one"}})
    ok(portal, "crm.timeline.comment.add", {"fields": {**owner, "COMMENT": "two"}})
    listed = ok(portal, "crm.timeline.comment.list", {"filter": owner, "order": {"ID": "DESC"}})
    assert [c["COMMENT"] for c in listed] == ["two", "one"]
    ok(portal, "crm.timeline.comment.delete", {"id": first})
    assert error(portal, "crm.timeline.comment.get", {"id": first})[0] == "NOT_FOUND"


def test_checklist_tree_members_and_errors(portal: Sandbox) -> None:
    task = ok(portal, "tasks.task.add", {"fields": {"TITLE": "T", "RESPONSIBLE_ID": 2}})["task"]
    task_id = int(task["id"])
    code, text = error(portal, "task.checklistitem.add", {"TASKID": task_id, "FIELDS": {"X": 1}})
    assert code == "ERROR_CORE" and "Item name not specified" in text
    assert "Action failed" in error(portal, "task.checklistitem.getlist", {"TASKID": 999})[1]
    # Without PARENT_ID an item joins the first checklist, created on demand.
    item = ok(portal, "task.checklistitem.add", {"TASKID": task_id, "FIELDS": {"TITLE": "a"}})
    child = {"TITLE": "b", "PARENT_ID": item, "MEMBERS": {"4": {"TYPE": "U"}}}
    ok(portal, "task.checklistitem.add", {"TASKID": task_id, "FIELDS": child})
    items = ok(portal, "task.checklistitem.getlist", {"TASKID": task_id})
    assert [(i["TITLE"], i["PARENT_ID"]) for i in items][-1] == ("Checklist 1", 0)
    assert ok(portal, "tasks.task.get", {"taskId": task_id})["task"]["auditors"] == ["4"]
    ok(portal, "task.checklistitem.complete", {"TASKID": task_id, "ITEMID": item})
    done = ok(portal, "task.checklistitem.get", {"TASKID": task_id, "ITEMID": item})
    assert done["IS_COMPLETE"] == "Y" and done["TOGGLED_BY"] == "1"
    ok(portal, "task.checklistitem.delete", {"TASKID": task_id, "ITEMID": item})
    left = ok(portal, "task.checklistitem.getlist", {"TASKID": task_id})
    assert [i["TITLE"] for i in left] == ["Checklist 1"]  # the item went with its sub-item


def test_notifications_tags_replace_and_unknown_users(portal: Sandbox) -> None:
    assert error(portal, "im.notify.system.add", {"MESSAGE": "x"})[0] == "USER_ID_EMPTY"
    assert error(portal, "im.notify.personal.add", {"USER_ID": 2})[0] == "MESSAGE_EMPTY"
    assert ok(portal, "im.notify.system.add", {"USER_ID": 999, "MESSAGE": "x"}) is False
    tagged = {"USER_ID": 2, "TAG": "sla-1", "CLIENT_ID": "app"}
    ok(portal, "im.notify.system.add", {**tagged, "MESSAGE": "first"})
    ok(portal, "im.notify.system.add", {**tagged, "MESSAGE": "second"})
    # Over a webhook a TAG without CLIENT_ID does not count: both stay.
    ok(portal, "im.notify.personal.add", {"USER_ID": 3, "TAG": "t", "MESSAGE": "a"})
    ok(portal, "im.notify.personal.add", {"USER_ID": 3, "TAG": "t", "MESSAGE": "b"})
    notes = portal.admin("docs", {"kind": "notify"})["docs"]
    assert [(n["USER_ID"], n["MESSAGE"]) for n in notes] == [(2, "second"), (3, "a"), (3, "b")]


def test_chat_members_and_lookup(portal: Sandbox) -> None:
    chat = ok(
        portal, "im.chat.add", {"USERS": [2, 999], "ENTITY_TYPE": "CRM", "ENTITY_ID": "DEAL|7"}
    )
    assert ok(portal, "im.chat.user.list", {"CHAT_ID": chat}) == [1, 2]  # 999 does not exist
    assert ok(portal, "im.chat.get", {"ENTITY_TYPE": "CRM", "ENTITY_ID": "DEAL|7"}) == {"ID": chat}
    assert ok(portal, "im.chat.get", {"ENTITY_TYPE": "CRM", "ENTITY_ID": "DEAL|8"}) is None
    assert error(portal, "im.chat.user.list", {})[0] == "CHAT_ID_EMPTY"
    assert error(portal, "im.chat.user.list", {"CHAT_ID": 99})[0] == "ACCESS_ERROR"


def test_calendar_required_parameters_and_invitations(portal: Sandbox) -> None:
    base = {"type": "user", "ownerId": 1, "from": "2030-01-10T10:00:00+01:00"}
    base["to"] = "2030-01-10T11:30:00+01:00"
    assert error(portal, "calendar.event.add", base)[1] == (
        'The required parameter "name" for the method "calendar.event.add" is not set'
    )
    bad = {**base, "name": "m", "remind": [{"type": "week", "count": 1}]}
    assert error(portal, "calendar.event.add", bad)[0] == ""
    meeting = {**base, "name": "m", "is_meeting": "Y", "attendees": [1, 3]}
    event_id = ok(portal, "calendar.event.add", meeting)
    shown = ok(portal, "calendar.event.getbyid", {"id": event_id})
    assert shown["DT_LENGTH"] == 5400 and shown["DATE_FROM_TS_UTC"] == "1894266000"
    window = {"from": "2030-01-01", "to": "2030-02-01"}
    invited = ok(portal, "calendar.event.get", {"type": "user", "ownerId": 3, **window})
    assert [e["ID"] for e in invited] == [str(event_id)]
    assert ok(portal, "calendar.event.get", {"type": "user", "ownerId": 2, **window}) == []


def test_workgroup_owner_stays_and_non_admins_are_refused(portal: Sandbox) -> None:
    group = ok(portal, "sonet_group.create", {"NAME": "G", "SCRUM_MASTER_ID": 3})
    assert error(portal, "sonet_group.create", {})[1] == "Incorrect input data"
    assert ok(portal, "sonet_group.user.delete", {"GROUP_ID": group, "USER_ID": [1, 3]}) == []
    assert (
        ok(portal, "sonet_group.user.update", {"GROUP_ID": group, "USER_ID": 1, "ROLE": "K"}) == []
    )
    assert (
        error(portal, "sonet_group.user.update", {"GROUP_ID": group, "USER_ID": 3, "ROLE": "A"})[1]
        == "Incorrect role code"
    )
    assert error(portal, "sonet_group.user.add", {"GROUP_ID": 99, "USER_ID": 2})[1] == (
        "Socialnetwork group not found"
    )
    portal.admin("settings", {"oauth_user_id": 2})
    refused = oauth_call(portal, "sonet_group.user.add", {"GROUP_ID": group, "USER_ID": 4})
    assert refused["error_description"] == "No permissions to add users"
    members = ok(portal, "sonet_group.user.get", {"ID": group})
    assert members == [{"USER_ID": "1", "ROLE": "A"}, {"USER_ID": "3", "ROLE": "E"}]


def test_feed_destinations_and_visibility(portal: Sandbox) -> None:
    assert error(portal, "log.blogpost.add", {"POST_MESSAGE": "x", "DEST": ["SG99"]}) == (
        "SONET_CONTROLLER_LIVEFEED_BLOGPOST_ADD_ERROR",
        "No destination specified",
    )
    assert error(portal, "log.blogpost.add", {"POST_MESSAGE": ""})[1] == (
        "Blog post hasn't been added"
    )
    private = ok(portal, "log.blogpost.add", {"POST_MESSAGE": "for 3", "DEST": ["U3"]})
    public = ok(portal, "log.blogpost.add", {"POST_MESSAGE": "all"})
    portal.admin("settings", {"oauth_user_id": 2})
    seen = oauth_call(portal, "log.blogpost.get", {})["result"]
    assert [p["ID"] for p in seen] == [str(public)]
    assert private != public


def test_business_process_checks_and_admin_only(portal: Sandbox) -> None:
    lead = ok(portal, "crm.lead.add", {"fields": {"TITLE": "L"}})
    start = {"TEMPLATE_ID": 1, "DOCUMENT_ID": ["crm", "CCrmDocumentLead", f"LEAD_{lead}"]}
    assert error(portal, "bizproc.workflow.start", start)[1] == (
        "Template type and DOCUMENT_ID mismatch!"
    )
    wrong = {**start, "DOCUMENT_ID": ["crm", "CCrmDocumentDeal", "DEAL_777"]}
    assert error(portal, "bizproc.workflow.start", wrong)[1] == "Wrong DOCUMENT_ID!"
    assert error(portal, "bizproc.workflow.start", {"TEMPLATE_ID": 42})[1] == "Template not found"
    portal.admin("settings", {"oauth_user_id": 2})
    denied = oauth_call(portal, "bizproc.workflow.template.list", {})
    assert denied["error"] == "ACCESS_DENIED"


def test_deal_contacts_follow_the_docs_primary_rules(portal: Sandbox) -> None:
    a, b, c = (ok(portal, "crm.contact.add", {"fields": {"NAME": n}}) for n in "abc")
    deal = ok(portal, "crm.deal.add", {"fields": {"TITLE": "D"}})
    assert ok(portal, "crm.deal.contact.add", {"id": deal, "fields": {"CONTACT_ID": a}}) is True
    assert ok(portal, "crm.deal.contact.add", {"id": deal, "fields": {"CONTACT_ID": a}}) is False
    ok(portal, "crm.deal.contact.add", {"id": deal, "fields": {"CONTACT_ID": b, "IS_PRIMARY": "Y"}})
    assert ok(portal, "crm.deal.get", {"id": deal})["CONTACT_ID"] == str(b)
    # No IS_PRIMARY in items: the first item is primary, whatever the SORT says.
    items = [{"CONTACT_ID": c, "SORT": 50}, {"CONTACT_ID": a, "SORT": 10}]
    ok(portal, "crm.deal.contact.items.set", {"id": deal, "items": items})
    links = ok(portal, "crm.deal.contact.items.get", {"id": deal})
    assert [(x["CONTACT_ID"], x["IS_PRIMARY"]) for x in links] == [(c, "Y"), (a, "N")]
    assert ok(portal, "crm.deal.contact.delete", {"id": deal, "fields": {"CONTACT_ID": c}})
    assert ok(portal, "crm.deal.get", {"id": deal})["CONTACT_ID"] == str(a)
    assert error(portal, "crm.deal.contact.items.get", {"id": 999})[1] == "Not found."


def test_drive_names_stay_unique(portal: Sandbox) -> None:
    (common,) = ok(portal, "disk.storage.getlist", {"filter": {"ENTITY_TYPE": "common"}})
    upload = {"id": common["ROOT_OBJECT_ID"], "data": {"NAME": "a.txt"}}
    upload["fileContent"] = ["a.txt", "aGk="]
    first = ok(portal, "disk.folder.uploadfile", upload)
    assert (first["NAME"], first["SIZE"]) == ("a.txt", "2")
    assert error(portal, "disk.folder.uploadfile", upload)[0] == "DISK_OBJ_22000"
    renamed = ok(portal, "disk.folder.uploadfile", {**upload, "generateUniqueName": True})
    assert renamed["NAME"] == "a (1).txt"
    assert error(portal, "disk.folder.uploadfile", {**upload, "data": {}})[0] == (
        "DISK_BASE_SERVICE_22001"
    )
    assert error(portal, "disk.file.get", {"id": common["ROOT_OBJECT_ID"]})[0] == "ERROR_NOT_FOUND"
    assert ok(portal, "disk.file.get", {"id": first["ID"]})["ID"] == str(first["ID"])


def test_bot_token_ownership_and_event_offsets(portal: Sandbox) -> None:
    fields = {"code": "b", "properties": {"name": "B"}}
    assert error(portal, "imbot.v2.Bot.register", {"fields": fields})[0] == (
        "BOT_TOKEN_NOT_SPECIFIED"
    )
    fields["botToken"] = "secret-1"
    bot = ok(portal, "imbot.v2.Bot.register", {"fields": fields})["bot"]["id"]
    assert ok(portal, "imbot.v2.Bot.register", {"fields": fields})["bot"]["id"] == bot
    wrong = error(portal, "imbot.v2.Event.get", {"botId": bot, "botToken": "secret-2"})
    assert wrong[0] == "BOT_OWNERSHIP_ERROR"
    auth = {"botId": bot, "botToken": "secret-1"}
    ok(portal, "im.message.add", {"DIALOG_ID": bot, "MESSAGE": "hello"})
    ok(portal, "im.message.add", {"DIALOG_ID": bot, "MESSAGE": "again"})
    first = ok(portal, "imbot.v2.Event.get", {**auth, "limit": 1})
    assert [e["type"] for e in first["events"]] == ["ONIMBOTV2MESSAGEADD"]
    assert first["hasMore"] is True
    rest = ok(portal, "imbot.v2.Event.get", {**auth, "offset": first["nextOffset"]})
    assert [e["data"]["message"]["text"] for e in rest["events"]] == ["again"]
    answer = {**auth, "commandId": 1, "messageId": 1, "dialogId": "1", "fields": {"message": "x"}}
    assert error(portal, "imbot.v2.Command.answer", answer)[0] == "COMMAND_ANSWER_FAILED"


def test_scrum_rules(portal: Sandbox) -> None:
    plain = ok(portal, "sonet_group.create", {"NAME": "not scrum"})
    assert error(portal, "tasks.api.scrum.backlog.get", {"id": plain})[1] == "Backlog not found"
    scrum = ok(portal, "sonet_group.create", {"NAME": "scrum", "SCRUM_MASTER_ID": 2})
    sprint = ok(portal, "tasks.api.scrum.sprint.add", {"fields": {"groupId": scrum, "name": "S"}})
    outside = ok(portal, "tasks.task.add", {"fields": {"TITLE": "x", "RESPONSIBLE_ID": 2}})
    outside_id = int(outside["task"]["id"])
    move = {"id": outside_id, "fields": {"entityId": sprint["id"]}}
    assert error(portal, "tasks.api.scrum.task.update", move) == ("0", "Task not found")
    inside = ok(
        portal, "tasks.task.add", {"fields": {"TITLE": "y", "RESPONSIBLE_ID": 2, "GROUP_ID": scrum}}
    )
    inside_id = int(inside["task"]["id"])
    ok(portal, "tasks.api.scrum.task.update", {"id": inside_id, "fields": {"storyPoints": "5"}})
    backlog = ok(portal, "tasks.api.scrum.backlog.get", {"id": scrum})
    assert ok(portal, "tasks.api.scrum.task.get", {"id": inside_id})["entityId"] == backlog["id"]
    ok(
        portal,
        "tasks.api.scrum.task.update",
        {"id": inside_id, "fields": {"entityId": sprint["id"]}},
    )
    ok(portal, "tasks.api.scrum.sprint.start", {"id": sprint["id"]})
    stages = ok(portal, "tasks.api.scrum.kanban.getStages", {"sprintId": sprint["id"]})
    assert [s["type"] for s in stages] == ["NEW", "WORK", "FINISH"]
    task = ok(portal, "tasks.task.get", {"taskId": inside_id, "select": ["STAGE_ID"]})["task"]
    assert task["stageId"] == stages[0]["id"]  # a started sprint puts its tasks in New
    assert error(portal, "tasks.api.scrum.sprint.start", {"id": sprint["id"]})[1] == (
        "Sprint must be planned"
    )
    foreign = {"sprintId": sprint["id"], "taskId": inside_id, "stageId": 999}
    assert error(portal, "tasks.api.scrum.kanban.addTask", foreign)[1] == "Stage not found"


def test_duplicates_by_phone_digits_and_email_case(portal: Sandbox) -> None:
    phone = [{"VALUE": "+49 (30) 123-45-67 ext. 12", "VALUE_TYPE": "WORK"}]
    lead = ok(portal, "crm.lead.add", {"fields": {"TITLE": "L", "PHONE": phone}})
    email = [{"VALUE": "Ana@Example.com", "VALUE_TYPE": "WORK"}]
    contact = ok(portal, "crm.contact.add", {"fields": {"NAME": "A", "EMAIL": email}})
    by_phone = {"type": "PHONE", "values": ["+493012345 67"]}
    assert ok(portal, "crm.duplicate.findbycomm", by_phone) == {"LEAD": [lead]}
    by_mail = {"type": "EMAIL", "values": ["ana@example.COM"], "entity_type": "CONTACT"}
    assert ok(portal, "crm.duplicate.findbycomm", by_mail) == {"CONTACT": [contact]}
    assert ok(portal, "crm.duplicate.findbycomm", {"type": "EMAIL", "values": ["x@y.z"]}) == []
    assert error(portal, "crm.duplicate.findbycomm", {"values": ["1"]})[0] == (
        "Communication type is not defined"
    )


def test_reset_empties_the_documents(portal: Sandbox) -> None:
    first = ok(portal, "im.chat.add", {"TITLE": "before"})
    portal.admin("reset")
    assert error(portal, "im.chat.user.list", {"CHAT_ID": first})[0] == "ACCESS_ERROR"
    assert ok(portal, "im.chat.add", {"TITLE": "after"}) == first  # ids start again
