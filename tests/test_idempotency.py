"""Idempotency records and the write runner: every state transition, races, expiry, masking.

These drive the library with plain callables standing in for the send step (the HTTP side is
exercised end to end by tests/test_safety_cli.py against the sandbox).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from b24agent.backends.file import FileDocuments
from b24agent.errors import (
    ApiError,
    ConflictError,
    OutcomeUnknownError,
    RateLimitError,
    ValidationError,
)
from b24agent.guard.idempotency import IdempotencyStore, auto_key, request_fingerprint
from b24agent.guard.safewrite import run_write
from b24agent.rest.idempotency_key import validate_idempotency_key
from race_support import race

FP = request_fingerprint("crm.lead.add", "v2", {"fields": {"TITLE": "a"}})


def _store(tmp_path: Path, **kwargs) -> IdempotencyStore:
    return IdempotencyStore(
        FileDocuments(tmp_path / "idem"),
        journals=tmp_path / "idem",
        ttl_s=kwargs.get("ttl", 86400),
        auto_window_s=600,
    )


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "idem").glob("*.json"))]


def _identity(obj):
    return obj


class Sender:
    """Counts sends and answers (or fails) as told."""

    def __init__(self, answer=None, error: BaseException | None = None) -> None:
        self.calls: list[tuple[dict, str | None]] = []
        self.answer = answer if answer is not None else {"result": 41}
        self.error = error

    def __call__(self, params, header_key):
        self.calls.append((dict(params), header_key))
        if self.error is not None:
            raise self.error
        return self.answer


class Reader:
    """A portal read stand-in: ``rows`` answered for every list call, calls recorded."""

    def __init__(self, rows) -> None:
        self.rows = rows
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, method, params):
        self.calls.append((method, dict(params)))
        return self.rows


def _run(store, send, *, key="k-1", method="crm.lead.add", params=None, read=None, **kw):
    return run_write(
        store,
        key=key,
        auto=kw.pop("auto", False),
        method=method,
        api=kw.pop("api", "v2"),
        params=params if params is not None else {"fields": {"TITLE": "a"}},
        send=send,
        read=read or Reader([]),
        mask=kw.pop("mask", _identity),
        **kw,
    )


def test_key_shape_is_checked() -> None:
    assert validate_idempotency_key("form-123") == "form-123"
    for bad in ("", "x" * 256, "tab\tkey", "ключ"):
        with pytest.raises(ValidationError):
            validate_idempotency_key(bad)


def test_fingerprint_ignores_key_order_and_method_case() -> None:
    a = request_fingerprint("CRM.LEAD.ADD", "v2", {"a": 1, "b": {"x": 1, "y": 2}})
    b = request_fingerprint("crm.lead.add.json", "v2", {"b": {"y": 2, "x": 1}, "a": 1})
    assert a == b
    assert a != request_fingerprint("crm.lead.add", "v3", {"a": 1, "b": {"x": 1, "y": 2}})
    assert auto_key("crm.lead.add", "v2", {"a": 1}) == auto_key("crm.lead.add", "v2", {"a": 1})


def test_done_is_replayed_without_sending(tmp_path: Path) -> None:
    store, send = _store(tmp_path), Sender({"result": 7, "time": {}})
    first = _run(store, send)
    second = _run(store, send)
    assert first.how == "sent" and second.how == "replayed"
    assert second.body == {"result": 7, "time": {}} and len(send.calls) == 1
    assert "not sent again" in second.note
    assert _records(tmp_path)[0]["state"] == "done"


def test_same_key_other_params_conflicts(tmp_path: Path) -> None:
    store, send = _store(tmp_path), Sender()
    _run(store, send)
    with pytest.raises(ConflictError) as err:
        _run(store, send, params={"fields": {"TITLE": "b"}})
    assert err.value.exit_code == 5 and err.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert len(send.calls) == 1


def test_key_held_by_a_live_process_conflicts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ticket = store.begin("k", fingerprint=FP, method="crm.lead.add")
    assert ticket.status == "fresh"
    with pytest.raises(ConflictError) as err:
        store.begin("k", fingerprint=FP, method="crm.lead.add", recoverable=True)
    assert err.value.code == "IDEMPOTENCY_KEY_IN_USE"


def test_key_held_by_a_dead_process_counts_as_unknown(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.begin("k", fingerprint=FP, method="tasks.task.add")
    path = next((tmp_path / "idem").glob("*.json"))
    record = json.loads(path.read_text())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record["owner"]["pid"] = int(dead.stdout)
    path.write_text(json.dumps(record))
    with pytest.raises(OutcomeUnknownError) as err:
        store.begin("k", fingerprint=FP, method="tasks.task.add")
    # The library says what to do in its own terms; the CLI adds its flag (cli.common.CLI_HINTS).
    assert err.value.code == "OUTCOME_UNRESOLVED" and "resolve the key" in err.value.hint
    assert "--" not in err.value.hint


def test_definite_failure_releases_the_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for error in (ApiError("bad field", code="ERROR_ARGUMENT"), RateLimitError("slow down")):
        with pytest.raises(type(error)):
            _run(store, Sender(error=error))
        assert _records(tmp_path) == []
    assert _run(store, Sender()).how == "sent"


@pytest.mark.parametrize(
    "error", [OutcomeUnknownError("timeout"), RuntimeError("bug"), KeyboardInterrupt()]
)
def test_possible_run_leaves_outcome_unknown(tmp_path: Path, error: BaseException) -> None:
    store = _store(tmp_path)
    with pytest.raises(type(error)):
        _run(store, Sender(error=error), method="tasks.task.add")
    assert _records(tmp_path)[0]["state"] == "outcome_unknown"
    send = Sender()
    with pytest.raises(OutcomeUnknownError):
        _run(store, send, method="tasks.task.add")
    assert send.calls == []


def test_resolve_failed_sends_and_resolve_done_does_not(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for key, resolve in (("a", "failed"), ("b", "done")):
        with pytest.raises(OutcomeUnknownError):
            _run(store, Sender(error=OutcomeUnknownError("t")), key=key, method="tasks.task.add")
        send = Sender({"result": {"task": {"id": 3}}})
        outcome = _run(store, send, key=key, method="tasks.task.add", resolve=resolve)
        assert len(send.calls) == (1 if resolve == "failed" else 0)
        assert outcome.how == ("sent" if resolve == "failed" else "resolved")
        assert _run(store, Sender(), key=key, method="tasks.task.add").how == "replayed"


def test_crm_create_is_stamped_and_reconciled(tmp_path: Path) -> None:
    store = _store(tmp_path)
    failing = Sender(error=OutcomeUnknownError("500 after running"))
    with pytest.raises(OutcomeUnknownError):
        _run(store, failing, key="form-9")
    assert failing.calls[0][0]["fields"] == {"TITLE": "a", "ORIGIN_ID": "form-9"}
    read = Reader([{"ID": "31"}])
    send = Sender()
    outcome = _run(store, send, key="form-9", read=read)
    assert outcome.how == "reconciled" and outcome.body == {"result": 31} and send.calls == []
    assert read.calls == [
        (
            "crm.lead.list",
            {"filter": {"=ORIGIN_ID": "form-9"}, "select": ["ID"], "order": {"ID": "ASC"}},
        )
    ]
    assert _run(store, send, key="form-9").body == {"result": 31}


def test_crm_create_not_found_is_sent_once_more(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(OutcomeUnknownError):
        _run(store, Sender(error=OutcomeUnknownError("reset")), key="k")
    send = Sender({"result": 5})
    outcome = _run(store, send, key="k", read=Reader([]))
    assert outcome.how == "sent" and send.calls[0][0]["fields"]["ORIGIN_ID"] == "k"


def test_caller_origin_id_is_kept_and_item_uses_origin_id(tmp_path: Path) -> None:
    store = _store(tmp_path)
    send = Sender({"result": {"item": {"id": 4}}})
    params = {"entityTypeId": 2, "fields": {"title": "d"}}
    _run(store, send, key="x", method="crm.item.add", params=params)
    assert send.calls[0][0]["fields"] == {"title": "d", "originId": "x"}
    own = Sender()
    _run(store, own, key="y", params={"fields": {"TITLE": "a", "ORIGIN_ID": "ext-1"}})
    assert own.calls[0][0]["fields"]["ORIGIN_ID"] == "ext-1"


def test_lookup_failure_keeps_the_record_unknown(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(OutcomeUnknownError):
        _run(store, Sender(error=OutcomeUnknownError("t")), key="k")

    def broken_read(method, params):
        raise RateLimitError("busy")

    with pytest.raises(RateLimitError):
        _run(store, Sender(), key="k", read=broken_read)
    assert _records(tmp_path)[0]["state"] == "outcome_unknown"


def test_v3_waits_for_resolve_then_resends_the_same_header_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = Sender(error=OutcomeUnknownError("t"))
    with pytest.raises(OutcomeUnknownError):
        _run(store, first, key="auto-x", auto=True, method="tasks.task.add", api="v3")
    with pytest.raises(OutcomeUnknownError):
        _run(store, Sender(), key="auto-x", auto=True, method="tasks.task.add", api="v3")
    again = Sender({"result": {"item": {"id": 1}}})
    _run(store, again, key="auto-x", auto=True, method="tasks.task.add", api="v3", resolve="failed")
    header = first.calls[0][1]
    assert header and header.startswith("b24a-") and again.calls[0][1] == header
    v2 = Sender()
    _run(store, v2, key="k-v2", method="tasks.task.add")
    assert v2.calls[0][1] is None  # v2 has no idempotency header


def test_stored_response_is_masked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    send = Sender({"result": {"token": "SECRET-VALUE"}})
    _run(store, send, mask=lambda obj: json.loads(json.dumps(obj).replace("SECRET-VALUE", "***")))
    assert (
        "SECRET-VALUE"
        not in (tmp_path / "idem")
        .joinpath(next((tmp_path / "idem").glob("*.json")).name)
        .read_text()
    )


def test_expired_record_lets_the_call_run_again(tmp_path: Path) -> None:
    store = IdempotencyStore(
        FileDocuments(tmp_path / "idem"), journals=tmp_path / "idem", ttl_s=0.2, auto_window_s=0.2
    )
    send = Sender()
    _run(store, send)
    time.sleep(0.3)
    assert _run(store, send).how == "sent" and len(send.calls) == 2


def test_sweep_removes_expired_settled_records(tmp_path: Path) -> None:
    store = IdempotencyStore(
        FileDocuments(tmp_path / "idem"), journals=tmp_path / "idem", ttl_s=0.1, auto_window_s=0.1
    )
    _run(store, Sender(), key="old")
    time.sleep(0.6)  # past both windows with room for a loaded machine
    assert store.sweep() == 1 and _records(tmp_path) == []


def _race(barrier, results, directory: str) -> None:
    store = IdempotencyStore(
        FileDocuments(Path(directory)), journals=Path(directory), ttl_s=600, auto_window_s=600
    )
    barrier.wait()
    try:
        ticket = store.begin("race", fingerprint=FP, method="crm.lead.add")
        results.put(ticket.status)
    except ConflictError:
        results.put("conflict")
    barrier.wait()  # the winner stays alive (holding the key) until everyone has decided


def test_twenty_racing_processes_one_wins(tmp_path: Path) -> None:
    outcomes = race(20, _race, str(tmp_path / "idem"))
    assert outcomes.count("fresh") == 1 and outcomes.count("conflict") == 19
