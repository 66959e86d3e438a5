"""The params schemas are checked with defs.json's definitions copied in, not looked up through
the registry per value (a fifth of the time a 10,000-line batch file took to check before its
first request). Copying must change no verdict and no error: compared here, value by value,
against the same schemas resolved the ordinary way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from b24agent.rest import schemas
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

SCHEMA_FOLDER = ROOT / "skills" / "bitrix24-agent" / "scripts" / "b24agent" / "rest" / "schemas"
#: Schemas that refer to defs.json (the ones whose checking the copying changes).
REFERRING = sorted(
    p.stem for p in SCHEMA_FOLDER.glob("*.json") if "b24agent:defs#" in p.read_text()
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", "0", "1", "7", "Y", "N", "x", "-1.5", "12a", "false"]),
)


def _keys(node: Any) -> set[str]:
    """Every property name anywhere in a schema, so generated values hit its rules."""
    found: set[str] = set()
    if isinstance(node, dict):
        found |= set(node.get("properties", {}))
        for value in node.values():
            found |= _keys(value)
    elif isinstance(node, list):
        for value in node:
            found |= _keys(value)
    return found


def keys_for(name: str) -> st.SearchStrategy[str]:
    names = sorted(_keys(schemas.load_schema(name)) | _keys(schemas.load_schema("defs")))
    return st.sampled_from(names) | st.text(max_size=3)


def values_for(name: str) -> st.SearchStrategy[Any]:
    keys = keys_for(name)
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )


def _by_lookup(name: str) -> Draft202012Validator:
    """The schema as stored, every ``$ref`` resolved through the registry."""
    return Draft202012Validator(schemas.load_schema(name), registry=schemas._registry())


def _errors(validator: Draft202012Validator, value: Any) -> list[tuple[Any, ...]]:
    """Each error as the caller sees it: where, which rule, and the reason we print."""
    return sorted(
        (
            list(e.absolute_path),
            e.validator,
            e.message,
            schemas._reason(e, schemas._original(value, e.absolute_path)[1]),
        )
        for e in validator.iter_errors(value)
    )


def test_every_referring_schema_is_covered() -> None:
    assert {"crm-entity-add", "crm-entity-update", "tasks-task-add"} <= set(REFERRING)


@pytest.mark.parametrize("name", REFERRING)
def test_copied_definitions_leave_no_lookup(name: str) -> None:
    assert "b24agent:defs#" not in json.dumps(schemas._validator(name).schema)


@pytest.mark.parametrize("name", REFERRING)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_copied_definitions_give_the_same_errors(name: str, data: st.DataObject) -> None:
    value = data.draw(st.dictionaries(keys_for(name), values_for(name), max_size=4))
    assert _errors(schemas._validator(name), value) == _errors(_by_lookup(name), value)
