"""Bitrix24 list filters, order and paging, compiled to SQLite for the sandbox store.

Every list method in Bitrix24 speaks the same small language: filter keys carry an operator
prefix (``>=ID``, ``%TITLE``, ``@STATUS_ID``, ``!=%NAME``; crm/leads/crm-lead-list.md),
``order`` maps fields to ASC/DESC, and ``start`` is an offset into pages of exactly 50 rows, with
``start=-1`` switching the count off (settings/performance/huge-data.md). REST 3.0 writes the same
conditions as ``[field, op, value]`` lists with ``{"logic": "or", "conditions": [...]}`` groups
(api-reference/rest-v3.md#filter). Compiling all of that in one place keeps every sandbox list
method consistent; method modules only say which fields exist through a ``Resolver``.

Values are stored typed (numbers as numbers, datetimes as unix seconds), so a filter value is
coerced to its field's kind before it reaches SQL: ``filter[>OPPORTUNITY]=100`` arrives as the
string "100" and must still compare numerically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from ..encoding import php_map
from .dates import parse_datetime
from .envelope import Page

__all__ = [
    "PAGE_SIZE",
    "Column",
    "FilterError",
    "Resolver",
    "compile_filter",
    "compile_order",
    "compile_v3_filter",
    "json_field",
    "make_page",
    "page_start",
    "select_list",
]

#: Bitrix24 list pages always hold 50 rows (crm-lead-list.md, "start").
PAGE_SIZE = 50


@dataclass(frozen=True)
class Column:
    """How one filterable field reads in SQL.

    ``kind`` is the value type filters coerce to: ``int``, ``float``, ``text``, ``yn`` (Y/N
    flags; 1/0 and true/false accepted), ``bool`` (JSON booleans, which SQLite reads as 1/0),
    ``auto`` (a number if it looks like one), ``datetime`` (unix seconds), ``date``
    (YYYY-MM-DD) or ``pattern`` (text whose ``=`` value may hold ``%``
    wildcards, as task TITLE does). ``each`` marks a JSON array column: conditions then hold for
    any element, read through ``each`` (an expression over ``j.value`` from ``json_each``).
    """

    expr: str
    kind: str = "text"
    each: str | None = None


Resolver = Callable[[str], "Column | None"]


class FilterError(Exception):
    """A filter or order the method refuses. ``reason`` is ``field`` (not filterable or unknown),
    ``operator``, ``value`` or ``order``; each API turns it into its own error code."""

    def __init__(self, reason: str, field: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {field} {detail}".strip())
        self.reason = reason
        self.field = field
        self.detail = detail


#: v2 key prefixes, longest first so ``!=%`` is not read as ``!=`` followed by ``%NAME``.
V2_PREFIXES: tuple[tuple[str, str], ...] = (
    ("!=%", "not_like_pattern"),
    ("!%=", "not_like_pattern"),
    (">=", "ge"),
    ("<=", "le"),
    ("=%", "like_pattern"),
    ("%=", "like_pattern"),
    ("!%", "not_like"),
    ("!=", "ne"),
    ("!@", "not_in"),
    (">", "gt"),
    ("<", "lt"),
    ("=", "eq"),
    ("!", "ne"),
    ("%", "like"),
    ("@", "in"),
)

#: REST 3.0 operators (rest-v3.md#operators).
V3_OPERATORS: dict[str, str] = {
    "=": "eq",
    "!=": "ne",
    ">": "gt",
    ">=": "ge",
    "<": "lt",
    "<=": "le",
    "in": "in",
    "between": "between",
}

_COMPARE = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def split_key(key: str) -> tuple[str, str]:
    """``">=ID"`` -> ``("ge", "ID")``; a key without a prefix means equality."""
    for prefix, op in V2_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return op, key[len(prefix) :]
    return "eq", key


# --- value coercion ---------------------------------------------------------------------------


def _coerce(kind: str, value: Any) -> Any:
    """One filter value in the stored type; ValueError if it cannot be one."""
    if kind == "int":
        if isinstance(value, bool):
            return int(value)
        number = float(str(value).strip())
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"not an integer: {value!r}")
        return int(number)
    if kind == "float":
        number = float(str(value).strip())
        if not math.isfinite(number):
            raise ValueError(f"not a number: {value!r}")
        return number
    if kind == "datetime":
        return parse_datetime(value)
    if kind == "bool":
        return 0 if value in (False, 0, "", "0", "N", "n") or str(value).lower() == "false" else 1
    if kind == "yn":
        text = str(value).strip().upper()
        return "Y" if value is True or text in ("Y", "1", "TRUE") else "N"
    if kind == "auto":
        return _auto(value)
    if kind == "date":
        return date.fromtimestamp(parse_datetime(value)).isoformat()
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def _auto(value: Any) -> Any:
    """Custom fields have no declared type here: numbers compare as numbers, the rest as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = "Y" if value is True else "N" if value is False else str(value)
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return list(value.values())
    return [value]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _blank(value: Any) -> bool:
    return value is None or value == ""


def json_field(name: str) -> str:
    """SQL reading field ``name`` of a record's JSON ``data`` column."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"bad field name {name!r}")
    return f"json_extract(data, '$.{name}')"


def _condition(op: str, column: Column, value: Any, field: str) -> tuple[str, list[Any]]:
    """SQL for one ``op`` on ``column``; array columns match when any element matches."""
    if column.each is not None:
        negated = {
            "ne": "eq",
            "not_in": "in",
            "not_like": "like",
            "not_like_pattern": "like_pattern",
        }
        positive = negated.get(op, op)
        inner = Column(column.each, column.kind)
        sql, params = _scalar_condition(positive, inner, value, field)
        exists = f"EXISTS (SELECT 1 FROM json_each({column.expr}) AS j WHERE {sql})"
        return (f"NOT {exists}" if positive != op else exists), params
    return _scalar_condition(op, column, value, field)


def _scalar_condition(op: str, column: Column, value: Any, field: str) -> tuple[str, list[Any]]:
    expr, kind = column.expr, column.kind
    if kind == "pattern":
        if op == "eq" and isinstance(value, str) and "%" in value:
            op = "like_pattern"
        kind = "text"
    if op in ("eq", "ne") and isinstance(value, (list, tuple, Mapping)):
        op = "in" if op == "eq" else "not_in"
    try:
        if op in ("in", "not_in"):
            items = [_coerce(kind, v) for v in _values(value) if not _blank(v)]
            if not items:
                return ("0" if op == "in" else "1"), []
            marks = ", ".join("?" for _ in items)
            if op == "in":
                return f"{expr} IN ({marks})", items
            return f"({expr} IS NULL OR {expr} NOT IN ({marks}))", items
        if op == "between":
            low, high = (_coerce(kind, v) for v in _values(value))
            return f"{expr} BETWEEN ? AND ?", [low, high]
        if op in ("eq", "ne") and _blank(value):
            empty = f"({expr} IS NULL OR {expr} = '')"
            return (empty if op == "eq" else f"NOT {empty}"), []
        if op in ("like", "not_like", "like_pattern", "not_like_pattern"):
            text = str(value)
            pattern = f"%{_escape_like(text)}%" if op in ("like", "not_like") else text
            like = f"{expr} LIKE ? ESCAPE '\\'"
            if op.startswith("not_"):
                return f"({expr} IS NULL OR NOT ({like}))", [pattern]
            return like, [pattern]
        typed = _coerce(kind, value)
    except (ValueError, TypeError):
        raise FilterError("value", field, f"invalid value {value!r}") from None
    if op == "eq":
        return f"{expr} = ?", [typed]
    if op == "ne":
        return f"({expr} IS NULL OR {expr} <> ?)", [typed]
    return f"{expr} {_COMPARE[op]} ?", [typed]


def _join(parts: list[tuple[str, list[Any]]], logic: str) -> tuple[str, list[Any]]:
    if not parts:
        return ("1" if logic == "AND" else "0"), []
    sql = f" {logic} ".join(f"({p})" for p, _ in parts)
    return sql, [v for _, values in parts for v in values]


# --- v2 filters -------------------------------------------------------------------------------


def compile_filter(filter_: Any, resolve: Resolver, *, strict: bool = False) -> tuple[str, list]:
    """SQL WHERE text and parameters for a v2 filter map.

    Unknown fields are skipped, as the old CRM methods ignore them, unless ``strict`` (crm.item.*
    answers INVALID_ARG_VALUE). A ``logic`` key (``OR``/``AND``) joins the conditions of its
    level, and a numeric key holding a map is a nested group, as in crm-item-list.md.
    """
    if filter_ is None or filter_ == "":
        return "1", []
    try:
        items = php_map(filter_)
    except TypeError:
        raise FilterError("value", "filter", "filter must be an object") from None
    logic = "AND"
    parts: list[tuple[str, list[Any]]] = []
    for key, value in items.items():
        if key.lower() == "logic":
            logic = "OR" if str(value).upper() == "OR" else "AND"
            continue
        if key.isdigit() and isinstance(value, (Mapping, list)):
            parts.append(compile_filter(value, resolve, strict=strict))
            continue
        op, field = split_key(key)
        column = resolve(field)
        if column is None:
            if strict:
                raise FilterError("field", field, "is not allowed in filter")
            continue
        parts.append(_condition(op, column, value, field))
    return _join(parts, logic)


# --- v3 filters -------------------------------------------------------------------------------


def compile_v3_filter(filter_: Any, resolve: Resolver) -> tuple[str, list]:
    """SQL for a REST 3.0 filter: a list of ``[field, op, value]`` / ``[field, value]``
    conditions (ANDed) and ``{"logic": "or"|"and", "conditions": [...]}`` groups."""
    if filter_ is None:
        return "1", []
    if not isinstance(filter_, list):
        raise FilterError("value", "filter", "filter must be a list of conditions")
    return _join([_v3_item(item, resolve) for item in filter_], "AND")


def _v3_item(item: Any, resolve: Resolver) -> tuple[str, list]:
    if isinstance(item, Mapping):
        logic = str(item.get("logic", "and")).upper()
        conditions = item.get("conditions")
        if logic not in ("AND", "OR") or not isinstance(conditions, list):
            raise FilterError("value", "filter", "a group needs logic and a conditions list")
        return _join([_v3_item(c, resolve) for c in conditions], logic)
    if not isinstance(item, list) or len(item) not in (2, 3) or not isinstance(item[0], str):
        raise FilterError("value", "filter", "a condition is [field, operator, value]")
    field = item[0]
    if len(item) == 2:
        op_text, value = ("in" if isinstance(item[1], list) else "="), item[1]
    else:
        op_text, value = str(item[1]).lower(), item[2]
    op = V3_OPERATORS.get(op_text)
    if op is None:
        raise FilterError("operator", field, f"unknown operator {op_text!r}")
    if op in ("in", "between") and not isinstance(value, list):
        raise FilterError("value", field, f"operator {op_text} needs a list")
    if op == "between" and len(value) != 2:
        raise FilterError("value", field, "between needs two values")
    column = resolve(field)
    if column is None:
        raise FilterError("field", field, "is not filterable")
    return _condition(op, column, value, field)


# --- order, select and paging -----------------------------------------------------------------


def compile_order(order: Any, resolve: Resolver, *, strict: bool = False) -> list[str]:
    """``ORDER BY`` terms for ``{field: ASC|DESC}``; unknown fields and directions are skipped
    unless ``strict`` (FilterError ``order``). The caller appends its id tie-breaker."""
    if order is None or order == "":
        return []
    try:
        items = php_map(order)
    except TypeError:
        raise FilterError("order", "order", "order must be an object") from None
    terms: list[str] = []
    for field, direction in items.items():
        column = resolve(field)
        text = str(direction).upper()
        if column is None or column.each is not None or text not in ("ASC", "DESC"):
            if strict:
                raise FilterError("order", field, f"cannot order by {field} {direction}")
            continue
        terms.append(f"{column.expr} {text}")
    return terms


def select_list(select: Any) -> list[str]:
    """The names in a ``select`` parameter (list, PHP map or a single string)."""
    if select is None or select == "":
        return []
    if isinstance(select, str):
        return [select]
    try:
        return [str(v) for v in php_map(select).values() if isinstance(v, (str, int))]
    except TypeError:
        return []


def page_start(start: Any) -> tuple[int, bool]:
    """(offset, count?) for ``start``: -1 (any negative) means offset 0 without counting."""
    try:
        offset = int(str(start).strip()) if start not in (None, "") else 0
    except ValueError:
        offset = 0
    if offset < 0:
        return 0, False
    return offset, True


def make_page(items: Any, total: int, offset: int, counted: bool) -> Page:
    """A ``Page``: ``next`` only while rows remain; without counting, total 0 and no ``next``."""
    if not counted:
        return Page(items, 0, None)
    following = offset + PAGE_SIZE
    return Page(items, total, following if following < total else None)
