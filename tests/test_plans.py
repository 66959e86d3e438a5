"""Plans library and record diffing: signing, every refusal reason, one run per plan, previews.

A dict stands in for the portal's ``get`` here; tests/test_safety_cli.py runs the same refusals
through the CLI against the sandbox.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from b24agent.backends.file import FileDocuments
from b24agent.errors import ConflictError, CorruptStateError, NotFoundError, UsageError
from b24agent.guard.diffing import changes, preview, record_ref
from b24agent.guard.plans import PlanStore
from b24agent.redact import Redactor
from race_support import race

SECRET = "webhook-code-0123456789"


class Portal:
    """Records by (get method, id); missing ones answer like the portal (NotFoundError)."""

    def __init__(self) -> None:
        self.records = {
            ("crm.lead.get", 5): {"ID": "5", "TITLE": "Old", "OPPORTUNITY": "100.00"},
            ("tasks.task.get", 9): {"task": {"id": "9", "title": "T", "responsibleId": "1"}},
            ("crm.item.get", 3): {"item": {"id": 3, "title": "Deal", "stageId": "NEW"}},
        }

    def __call__(self, method, params):
        key = params.get("id", params.get("taskId"))
        try:
            return self.records[(method, int(key))]
        except KeyError:
            raise NotFoundError("Not found", code="") from None


def _store(tmp_path: Path, portal: str = "127.0.0.1_9000", ttl: float = 600) -> PlanStore:
    return PlanStore(FileDocuments(tmp_path / "plans"), portal=portal, ttl_s=ttl)


def _plan(store: PlanStore, read=None, method="crm.lead.update", params=None, risk="write"):
    params = params or {"id": 5, "fields": {"TITLE": "New", "OPPORTUNITY": 100}}
    return store.create(
        method=method,
        api="v2",
        params=params,
        risk=risk,
        packs=["core"],
        read=read or Portal(),
        mask=Redactor([SECRET]).mask_obj,
    )


def test_plan_is_stored_signed_with_a_private_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = _plan(store)
    assert len(plan.id) >= 32 and plan.id != _plan(store).id
    key = tmp_path / "plans" / ".plan-signing-key.json"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    stored = json.loads((tmp_path / "plans" / f"{plan.id}.json").read_text())
    assert stored["plan"]["params_digest"] == plan.params_digest and len(stored["signature"]) == 64
    assert plan.command("b24") == f"b24 --execute-plan {plan.id}"
    loaded = store.load(plan.id)
    assert loaded.params == plan.params and loaded.risk == "write"


def test_update_plan_shows_field_diff(tmp_path: Path) -> None:
    plan = _plan(_store(tmp_path))
    assert plan.preview["changes"] == [{"field": "TITLE", "before": "Old", "after": "New"}]
    assert plan.preview["unchanged"] == ["OPPORTUNITY"]
    assert plan.record_fingerprint and plan.target == {"crm.lead.get": {"id": 5}}


def test_delete_plan_shows_whole_record(tmp_path: Path) -> None:
    plan = _plan(_store(tmp_path), method="crm.lead.delete", params={"id": 5}, risk="destructive")
    assert plan.preview["record"] == {"ID": "5", "TITLE": "Old", "OPPORTUNITY": "100.00"}
    assert plan.command("b24") == f"b24 --execute-plan {plan.id} --confirm-destructive"


def test_unlisted_plan_is_marked_in_the_plan_not_on_its_command_line(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = store.create(
        method="vendor.widget.add",
        api="v2",
        params={},
        risk="write",
        packs=["core"],
        read=Portal(),
        mask=Redactor([]).mask_obj,
        unlisted=True,
    )
    assert plan.command("b24") == f"b24 --execute-plan {plan.id}"
    assert store.load(plan.id).unlisted


def test_task_and_item_records_are_unwrapped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    task = _plan(
        store,
        method="tasks.task.update",
        params={"taskId": 9, "fields": {"TITLE": "T2", "RESPONSIBLE_ID": 1}},
    )
    assert task.preview["changes"] == [{"field": "TITLE", "before": "T", "after": "T2"}]
    item = _plan(
        store, method="crm.item.delete", params={"entityTypeId": 2, "id": 3}, risk="destructive"
    )
    assert item.preview["record"]["title"] == "Deal"
    assert item.target == {"crm.item.get": {"entityTypeId": 2, "id": 3}}


@pytest.mark.parametrize(
    "fields", [{"TITLE": f"x {SECRET}"}, {"TITLE": "x", "password": "p4ssw0rd-value"}]
)
def test_params_holding_secrets_are_never_planned(tmp_path: Path, fields: dict) -> None:
    with pytest.raises(UsageError) as err:
        _plan(_store(tmp_path), params={"id": 5, "fields": fields})
    assert err.value.code == "PLAN_WITH_SECRET"
    assert list((tmp_path / "plans").glob("*.json")) == []


def test_plan_for_a_missing_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        _plan(_store(tmp_path), params={"id": 404, "fields": {"TITLE": "x"}})


def test_edited_plan_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = _plan(store)
    path = tmp_path / "plans" / f"{plan.id}.json"
    stored = json.loads(path.read_text())
    stored["plan"]["params"]["fields"]["TITLE"] = "Evil"
    path.write_text(json.dumps(stored))
    with pytest.raises(ConflictError) as err:
        store.load(plan.id)
    assert err.value.code == "PLAN_TAMPERED" and err.value.exit_code == 5


def test_garbled_plan_file_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = _plan(store)
    (tmp_path / "plans" / f"{plan.id}.json").write_text('{"garbage": "sk-secret-value')
    with pytest.raises(CorruptStateError) as err:
        store.load(plan.id)
    # Corrupt state is one error whoever finds it: STATE_CORRUPT, exit 4, the path named and
    # the content never quoted.
    assert err.value.code == "STATE_CORRUPT" and err.value.exit_code == 4
    assert plan.id in err.value.message and "sk-secret-value" not in str(err.value.to_json())


def test_plan_runs_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = store.load(_plan(store).id)
    store.claim(plan)
    with pytest.raises(ConflictError) as err:
        store.claim(plan)
    assert err.value.code == "PLAN_SPENT"
    with pytest.raises(ConflictError) as err:
        store.load(plan.id)
    assert err.value.code == "PLAN_SPENT"


def test_expired_plan_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, ttl=0.2)
    plan = _plan(store)
    time.sleep(0.3)
    with pytest.raises(ConflictError) as err:
        store.load(plan.id)
    assert err.value.code == "PLAN_EXPIRED"


def test_other_portal_is_refused(tmp_path: Path) -> None:
    plan = _plan(_store(tmp_path))
    with pytest.raises(ConflictError) as err:
        _store(tmp_path, portal="other.bitrix24.com").load(plan.id)
    assert err.value.code == "PLAN_OTHER_PORTAL"


def test_changed_or_deleted_record_makes_the_plan_stale(tmp_path: Path) -> None:
    store = _store(tmp_path)
    portal = Portal()
    plan = _plan(store, read=portal)
    store.check_fresh(plan, portal)  # unchanged: fine
    portal.records[("crm.lead.get", 5)]["TITLE"] = "Changed by someone"
    with pytest.raises(ConflictError) as err:
        store.check_fresh(plan, portal)
    assert err.value.code == "PLAN_STALE"
    del portal.records[("crm.lead.get", 5)]
    with pytest.raises(ConflictError):
        store.check_fresh(plan, portal)


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "short", "a" * 65, "x y" * 8])
def test_malformed_ids_are_usage_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        _store(tmp_path).load(bad)


def test_unknown_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConflictError) as err:
        _store(tmp_path).load("A" * 32)
    assert err.value.code == "PLAN_NOT_FOUND"


def _claim(barrier, results, directory: str, plan_id: str) -> None:
    store = PlanStore(FileDocuments(Path(directory)), portal="127.0.0.1_9000", ttl_s=600)
    plan = store.load(plan_id)
    barrier.wait()
    try:
        store.claim(plan)
        results.put("won")
    except ConflictError:
        results.put("refused")


def test_racing_executions_one_wins(tmp_path: Path) -> None:
    plan = _plan(_store(tmp_path))
    outcomes = race(8, _claim, str(tmp_path / "plans"), plan.id)
    assert outcomes == ["refused"] * 7 + ["won"]


def test_sweep_removes_long_expired_plans(tmp_path: Path) -> None:
    store = _store(tmp_path, ttl=1)
    plan = _plan(store)
    store.claim(store.load(plan.id))
    assert store.sweep(now=time.time() + 2 * 3600) == 2
    assert not (tmp_path / "plans" / f"{plan.id}.json").exists()


def test_record_ref_covers_single_record_changes_only() -> None:
    assert record_ref("crm.deal.update", {"id": 1, "fields": {}}).get_method == "crm.deal.get"
    assert record_ref("CRM.Contact.Delete", {"id": 1}).action == "delete"
    assert record_ref("tasks.task.delete", {"taskId": 2}).get_params == {"taskId": 2}
    assert record_ref("crm.lead.add", {"fields": {}}) is None
    assert record_ref("crm.lead.update", {"fields": {}}) is None  # no id: nothing to read
    assert record_ref("crm.lead.userfield.update", {"id": 1}) is None


def test_changes_compare_values_the_way_bitrix_stores_them() -> None:
    record = {"OPPORTUNITY": "100.00", "ASSIGNED_BY_ID": "5", "COMMENTS": None, "PHONE": [1]}
    same = {"OPPORTUNITY": 100, "ASSIGNED_BY_ID": 5, "COMMENTS": "", "PHONE": [1]}
    assert changes(record, same) == []
    diff = changes(record, {"OPPORTUNITY": 0, "NEW_FIELD": "x"})
    assert [c["field"] for c in diff] == ["OPPORTUNITY", "NEW_FIELD"]


def test_preview_of_vanished_record() -> None:
    ref = record_ref("crm.lead.delete", {"id": 1})
    assert preview(ref, None) == {
        "action": "delete",
        "read": {"crm.lead.get": {"id": 1}},
        "exists": False,
    }


def test_plan_ids_never_look_like_flags(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = [_plan(store).id for _ in range(64)]
    assert all(i.startswith("p-") and len(i) == 34 for i in ids) and len(set(ids)) == 64
