"""Properties of the PHP query dialect shared by client and sandbox (b24agent/encoding.py).

If encoding and decoding drift apart, every form body and every batch command the client sends
would arrive changed, so the round trips are checked over generated nested params, not examples.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from b24agent.encoding import (
    build_batch_command,
    decode_query,
    encode_query,
    flatten_params,
    parse_batch_command,
    php_map,
    php_truthy,
    phpify,
)
from hypothesis import given
from hypothesis import strategies as st

keys = st.text(alphabet=string.ascii_letters + string.digits + "_>=<!%@.", min_size=1, max_size=8)
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)
params_strategy = st.dictionaries(keys, values, max_size=6)


def php_view(value: Any) -> Any:
    """What PHP holds after a query round trip: string leaves, nulls and empty arrays gone,
    lists as 0..n-1 maps (phpify turns those back into lists afterwards)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        value = {str(i): item for i, item in enumerate(value)}
    if isinstance(value, dict):
        kept = {str(k): php_view(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None} or None
    return None if value is None else str(value)


def expected(params: dict[str, Any]) -> Any:
    return phpify(php_view(params) or {})


@given(params_strategy)
def test_encode_decode_round_trip(params: dict[str, Any]) -> None:
    assert decode_query(encode_query(params)) == expected(params)


@given(params_strategy)
def test_query_is_plain_ascii_without_raw_brackets(params: dict[str, Any]) -> None:
    query = encode_query(params)
    assert query.isascii()
    assert "[" not in query and "]" not in query and " " not in query


@given(st.from_regex(r"[a-z]{2,8}(\.[a-z]{2,8}){0,3}", fullmatch=True), params_strategy)
def test_batch_command_round_trip(method: str, params: dict[str, Any]) -> None:
    command = build_batch_command(method, params)
    assert parse_batch_command(command) == (method, expected(params))


def test_batch_command_keeps_reference_text() -> None:
    command = build_batch_command(
        "crm.lead.list", {"filter": {">ID": "$result[prev][49][ID]"}, "start": -1}
    )
    assert parse_batch_command(command) == (
        "crm.lead.list",
        {"filter": {">ID": "$result[prev][49][ID]"}, "start": "-1"},
    )


@pytest.mark.parametrize(
    ("query", "decoded"),
    [
        ("select[]=ID&select[]=TITLE", {"select": ["ID", "TITLE"]}),
        ("filter[>ID]=5&filter[%TITLE]=a", {"filter": {">ID": "5", "%TITLE": "a"}}),
        ("fields[PHONE][0][VALUE]=1", {"fields": {"PHONE": [{"VALUE": "1"}]}}),
        ("a[b=1", {"a[b": "1"}),
        ("a[2]=x&a[]=y", {"a": {"2": "x", "3": "y"}}),
        ("id=", {"id": ""}),
    ],
)
def test_decode_php_bracket_syntax(query: str, decoded: dict[str, Any]) -> None:
    assert decode_query(query) == decoded


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (0, False),
        ("0", False),
        ("", False),
        (None, False),
        (False, False),
        ([], False),
        ({}, False),
        (0.0, False),
        (1, True),
        ("1", True),
        ("false", True),
        ("00", True),
        (" ", True),
        (True, True),
        ([0], True),
        ({"a": 0}, True),
        (-1, True),
    ],
)
def test_php_truthy_table(value: Any, truthy: bool) -> None:
    assert php_truthy(value) is truthy


@given(st.lists(st.text(max_size=5), min_size=1, max_size=8))
def test_phpify_turns_sequential_maps_into_lists(items: list[str]) -> None:
    assert phpify({str(i): v for i, v in enumerate(items)}) == items


@given(st.dictionaries(keys, st.text(max_size=5), min_size=1, max_size=6))
def test_phpify_keeps_other_maps_and_php_map_undoes_it(mapping: dict[str, str]) -> None:
    converted = phpify(mapping)
    if list(mapping) == [str(i) for i in range(len(mapping))]:
        assert converted == list(mapping.values())
    else:
        assert converted == mapping
    assert php_map(converted) == mapping


@given(values)
def test_phpify_is_idempotent(value: Any) -> None:
    assert phpify(phpify(value)) == phpify(value)


def test_php_map_accepts_every_empty_form() -> None:
    assert php_map([]) == php_map({}) == php_map(None) == {}
    with pytest.raises(TypeError):
        php_map("x")


def test_flatten_drops_what_php_cannot_express() -> None:
    assert flatten_params({"a": None, "b": [], "c": {}, "d": True, "e": 2.0}) == [
        ("d", "1"),
        ("e", "2"),
    ]
