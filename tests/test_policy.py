"""Policy gates, called as a library: packs, allowlist, confirmations, batch, require-plan."""

from __future__ import annotations

import pytest
from b24agent import catalog
from b24agent.encoding import build_batch_command
from b24agent.errors import ConfigError, PolicyError, ValidationError
from b24agent.guard.policy import Gates, assess, authorize, check_packs, commands_of, listed
from b24agent.settings import Ceiling
from hypothesis import given
from hypothesis import strategies as st

READ, WRITE, DELETE = "crm.lead.list", "crm.lead.add", "crm.lead.delete"
COMMS_WRITE = "im.message.add"
UNKNOWN = "vendor.widget.frobnicate"


def _one(method: str, params: dict | None = None):
    return assess([(method, params or {}, None)])


def _refusal(assessment, gates: Gates, stage: str = "call") -> PolicyError:
    with pytest.raises(PolicyError) as err:
        authorize(assessment, gates, stage)
    assert err.value.exit_code == 3
    return err.value


def _text(error: PolicyError) -> str:
    return f"{error.message} {error.hint}"


def _batch(*commands: tuple[str, dict]) -> dict:
    return {
        "halt": 0,
        "cmd": {f"c{i}": build_batch_command(m, p) for i, (m, p) in enumerate(commands)},
    }


def test_the_catalog_facts_these_tests_rely_on() -> None:
    assert catalog.pack_of(WRITE) == "core" and catalog.pack_of(COMMS_WRITE) == "comms"
    assert catalog.pack_of(UNKNOWN) is None and catalog.risk_of(UNKNOWN) == "write"
    assert [catalog.risk_of(m) for m in (READ, WRITE, DELETE)] == ["read", "write", "destructive"]


def test_core_read_needs_no_flag() -> None:
    authorize(_one(READ), Gates())
    assert _one(READ).risk == "read" and not _one(READ).writes


def test_method_outside_enabled_packs_names_every_way_in() -> None:
    error = _refusal(_one(COMMS_WRITE), Gates(confirm_write=True))
    assert error.code == "METHOD_NOT_ALLOWED"
    assert "pack 'comms'" in error.message
    for flag in ("--packs core,comms", f"--method-allowlist '{COMMS_WRITE}'"):
        assert flag in error.hint


def test_enabling_the_pack_or_allowlisting_lets_it_through() -> None:
    authorize(_one(COMMS_WRITE), Gates(packs=("core", "comms"), confirm_write=True))
    authorize(_one(COMMS_WRITE), Gates(method_allowlist=("im.message.*",), confirm_write=True))
    authorize(_one(COMMS_WRITE), Gates(allow_unlisted=True, confirm_write=True))


def test_packs_none_leaves_only_the_allowlist() -> None:
    gates = Gates(packs=("none",), method_allowlist=("user.*",))
    authorize(_one("user.get"), gates)
    error = _refusal(_one(READ), gates)
    assert "enabled: none" in error.message


def test_allowlist_patterns_are_case_insensitive_fnmatch() -> None:
    gates = Gates(packs=("none",), method_allowlist=("CRM.Lead.?ist",))
    authorize(_one("crm.lead.list"), gates)
    _refusal(_one("crm.deal.list"), gates)


def test_unknown_method_is_unlisted_and_a_write() -> None:
    error = _refusal(_one(UNKNOWN), Gates(confirm_write=True))
    assert error.code == "METHOD_UNLISTED" and "B24_METHOD_ALLOWLIST" in error.hint
    error = _refusal(_one(UNKNOWN), Gates(allow_unlisted=True))
    assert "--confirm-write" in _text(error)
    authorize(_one(UNKNOWN), Gates(allow_unlisted=True, confirm_write=True))


def test_write_needs_confirm_write() -> None:
    error = _refusal(_one(WRITE), Gates())
    assert error.code == "CONFIRMATION_REQUIRED" and "--confirm-write" in error.message
    assert "--plan-only" in error.hint
    authorize(_one(WRITE), Gates(confirm_write=True))


def test_each_class_has_its_own_confirmation() -> None:
    error = _refusal(_one(DELETE), Gates(confirm_write=True))
    assert "--confirm-destructive" in error.message
    _refusal(_one(WRITE), Gates(confirm_destructive=True))
    authorize(_one(DELETE), Gates(confirm_destructive=True))


def test_method_names_are_normalised() -> None:
    assert _one("CRM.Lead.Delete.json").commands[0].method == DELETE
    assert _one(" CRM.Lead.Delete.json ").risk == "destructive"


def test_batch_takes_the_strongest_class_and_names_that_command() -> None:
    reads = _one("batch", _batch((READ, {}), ("user.current", {})))
    assert reads.risk == "read"
    authorize(reads, Gates())
    mixed = _one(
        "batch", _batch((READ, {}), (WRITE, {"fields": {"TITLE": "x"}}), (DELETE, {"id": 1}))
    )
    assert mixed.risk == "destructive"
    error = _refusal(mixed, Gates(confirm_write=True))
    assert "command 'c2' (crm.lead.delete)" in error.message
    assert "--confirm-destructive" in error.message
    writes = _one("batch", _batch((READ, {}), (WRITE, {})))
    assert "command 'c1' (crm.lead.add)" in _refusal(writes, Gates()).message


def test_batch_commands_are_each_checked_against_packs() -> None:
    params = _batch((READ, {}), (COMMS_WRITE, {"DIALOG_ID": 1, "MESSAGE": "hi"}))
    error = _refusal(_one("batch", params), Gates(confirm_write=True))
    assert "command 'c1' (im.message.add)" in error.message
    authorize(_one("batch", params), Gates(packs=("core", "comms"), confirm_write=True))


def test_batch_itself_must_be_allowed() -> None:
    gates = Gates(packs=("none",), method_allowlist=("crm.*",))
    error = _refusal(_one("batch", _batch((READ, {}))), gates)
    assert error.message.startswith("batch ")


def test_batch_cmd_as_php_list_is_read() -> None:
    params = {"cmd": [build_batch_command(READ), build_batch_command(DELETE, {"id": 3})]}
    assessment = _one("batch", params)
    assert assessment.risk == "destructive"
    assert assessment.riskiest().label == "batch command '1' (crm.lead.delete)"


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({}, "non-empty cmd"),
        ({"cmd": {}}, "non-empty cmd"),
        ({"cmd": "crm.lead.list"}, "non-empty cmd"),
        ({"cmd": {"a": 5}}, "cmd[a] must be a string"),
        ({"cmd": {"a": "batch?cmd[b]=crm.lead.delete%3Fid%3D1"}}, "batch inside a batch"),
    ],
)
def test_malformed_batches_are_validation_errors(params: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        commands_of("batch", params)
    assert fragment in err.value.message and err.value.exit_code == 2


def test_batch_file_lines_are_assessed_together() -> None:
    calls = [(READ, {}, "line 1 (crm.lead.list)"), (DELETE, {"id": 1}, "line 2 (crm.lead.delete)")]
    assessment = assess(calls)
    assert assessment.risk == "destructive"
    assert "line 2 (crm.lead.delete)" in _refusal(assessment, Gates(confirm_write=True)).message


def test_require_plan_blocks_direct_writes_only() -> None:
    gates = Gates(require_plan=True, confirm_write=True, confirm_destructive=True)
    error = _refusal(_one(WRITE), gates)
    assert error.code == "PLAN_REQUIRED"
    assert "--plan-only" in error.hint and "--execute-plan" in error.hint
    _refusal(_one(DELETE), gates)
    authorize(_one(READ), gates)


def test_plan_stage_checks_packs_but_needs_no_confirmation() -> None:
    authorize(_one(DELETE), Gates(require_plan=True), "plan")
    _refusal(_one(COMMS_WRITE), Gates(), "plan")


def test_execute_stage_plan_counts_as_write_confirmation_not_destructive() -> None:
    authorize(_one(WRITE), Gates(require_plan=True), "execute")
    error = _refusal(_one(DELETE), Gates(require_plan=True), "execute")
    assert "--confirm-destructive" in error.message and "--execute-plan" in error.hint
    authorize(_one(DELETE), Gates(confirm_destructive=True), "execute")
    _refusal(_one(COMMS_WRITE), Gates(), "execute")


def test_unknown_pack_names_are_config_errors() -> None:
    check_packs(["core", "comms", "none"])
    with pytest.raises(ConfigError) as err:
        check_packs(["core", "telepathy"])
    assert "telepathy" in err.value.message and "core" in err.value.hint
    with pytest.raises(ConfigError):
        authorize(_one(READ), Gates(packs=("telepathy",)))


METHODS = [READ, WRITE, DELETE, "user.current", "tasks.task.add", "crm.deal.delete", UNKNOWN]


@given(st.lists(st.sampled_from(METHODS), min_size=1, max_size=50))
def test_batch_risk_is_the_maximum_of_its_commands(methods: list[str]) -> None:
    rank = {"read": 0, "write": 1, "destructive": 2}
    assessment = _one("batch", _batch(*((m, {"id": 1}) for m in methods)))
    expected = max((catalog.risk_of(m) for m in methods), key=rank.__getitem__)
    assert assessment.risk == expected
    assert len(assessment.commands) == len(methods) + 1


def test_listed_ignores_allow_unlisted() -> None:
    assert listed(_one(WRITE), Gates())
    assert not listed(_one(UNKNOWN), Gates(allow_unlisted=True))
    vendor = ("vendor.*",)
    assert listed(
        _one(UNKNOWN), Gates(method_allowlist=vendor, ceilings=(Ceiling(allowlist=vendor),))
    )
    assert not listed(_one(UNKNOWN), Gates(method_allowlist=("vendor.*",)))
