"""JSON Schemas for call parameters and our own files, kept as data next to this module.

Why check parameters before sending: the portal's own answers to a malformed write are vague
(``ERROR_CORE``, or a lead created without its phone because ``PHONE`` was a string), and an agent
fixes a message that names the field far faster. Bitrix24 reads most parameter names without
regard to case, so the check does too: keys are compared lower-cased and the error names the
field as the caller spelled it. Which schema applies to which method is data (``methods.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import relevance
from referencing import Registry, Resource

from ...errors import ValidationError
from ..sendable import check_sendable

__all__ = ["load_schema", "validate_batch_line", "validate_params"]


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema stored as ``schemas/<name>.json``; one shared dict per name, never to be
    changed, so ``state.read_json`` checks it once per process instead of once per read."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _registry() -> Registry:
    defs = load_schema("defs")
    return Registry().with_resource(defs["$id"], Resource.from_contents(defs))


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_inline_refs(load_schema(name)), registry=_registry())


def _inline_refs(node: Any, local: bool = False) -> Any:
    """``node`` with each bare ``{"$ref": "b24agent:defs#/$defs/NAME"}`` (inside defs.json also
    ``#/$defs/NAME``, ``local``) replaced by a copy of that definition. Same meaning, checked
    without the registry lookup each ``$ref`` costs per instance: 0.28 s of the 0.97 s that
    10,000 batch-file lines took to check before the first request could leave. Any other
    ``$ref`` stays, for the registry to resolve."""
    if isinstance(node, list):
        return [_inline_refs(item, local) for item in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) == 1:
        where, _, name = ref.rpartition("/$defs/")
        defs = load_schema("defs")["$defs"]
        if (where == "b24agent:defs#" or (local and where == "#")) and name in defs:
            return _inline_refs(defs[name], local=True)
    return {key: _inline_refs(value, local) for key, value in node.items()}


@cache
def _method_table(api: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    rows = load_schema("methods").get(api, [])
    return tuple((re.compile(pattern), schema) for pattern, schema in rows)


def schema_for(method: str, api: str = "v2") -> str | None:
    """Name of the schema that checks ``method``'s params, or None when none applies."""
    name = method.lower()
    for pattern, schema in _method_table(api):
        if pattern.search(name):
            return schema
    return None


def _lower_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def _original(original: Any, path: Iterable[Any]) -> tuple[list[str], Any]:
    """Walk the caller's object along a lower-cased path: (names as spelled, node reached)."""
    names: list[str] = []
    node = original
    for step in path:
        if isinstance(node, Mapping):
            match = next((k for k in node if str(k).lower() == str(step)), step)
            names.append(str(match))
            node = node.get(match)
        else:
            names.append(str(step))
            node = node[step] if isinstance(node, list) and isinstance(step, int) else None
    return names, node


def _reason(error: SchemaError, node: Any) -> tuple[list[Any], str]:
    """(extra path steps, human reason) for one schema error, without echoing the value.

    ``node`` is the caller's own (not lower-cased) value at the error's place.
    """
    kind, expected = error.validator, error.validator_value
    if kind == "required":
        missing = [n for n in expected if n not in (error.instance or {})]
        return missing[:1], "is required"
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in node if str(k).lower() not in known)
        return [], f"has unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}"
    if kind in ("anyOf", "oneOf", "allOf") and error.schema.get("description"):
        return [], f"must be {error.schema['description']}"
    types = expected if isinstance(expected, list) else [expected]
    reasons = {
        "type": lambda: "must be of type " + " or ".join(types),
        "minProperties": lambda: "must not be empty",
        "minItems": lambda: "must not be empty",
        "minLength": lambda: "must not be empty",
        "maxProperties": lambda: f"must have at most {expected} entries",
        "maxItems": lambda: f"must have at most {expected} entries",
        "minimum": lambda: f"must be >= {expected}",
        "maximum": lambda: f"must be <= {expected}",
        "enum": lambda: "must be one of " + ", ".join(json.dumps(v) for v in expected),
        "pattern": lambda: "has an invalid format",
    }
    return [], reasons.get(kind, lambda: f"fails the {kind} rule")()


def _check(schema: str, value: Any, what: str, root: str) -> None:
    """Raise ValidationError "<what>: <root.path> <reason>" for the most relevant failure."""
    errors = list(_validator(schema).iter_errors(_lower_keys(value)))
    if not errors:
        return
    error = max(errors, key=relevance)
    names, node = _original(value, error.absolute_path)
    extra, reason = _reason(error, node)
    field = ".".join([root, *names, *map(str, extra)]).strip(".")
    raise ValidationError(
        f"{what}: {field} {reason}" if field else f"{what}: {reason}",
        code="INVALID_PARAMS",
        hint=f"fix {field or what} (schema {schema}.json)",
        details={"field": field},
    )


def validate_params(method: str, params: Any, *, api: str = "v2") -> None:
    """Raise ValidationError naming the field when ``params`` cannot be right for ``method``
    (not plain JSON data at all, see ``sendable``, or not what the method's schema wants)."""
    if not isinstance(params, Mapping):
        raise ValidationError(
            f"{method}: params must be a JSON object, not {type(params).__name__}",
            code="INVALID_PARAMS",
            details={"field": "params"},
        )
    check_sendable(params)
    schema = schema_for(method, api)
    if schema is not None:
        _check(schema, params, method, "params")


def validate_batch_line(obj: Any, *, where: str = "batch line") -> tuple[str, dict[str, Any]]:
    """Check one ``--batch-file`` line ``{"method": str, "params": {...}}``; return both parts."""
    if not isinstance(obj, Mapping):
        raise ValidationError(
            f'{where}: must be a JSON object {{"method": ..., "params": {{...}}}}',
            code="INVALID_PARAMS",
        )
    _check("batch-line", obj, where, "")
    method, params = obj["method"], dict(obj.get("params") or {})
    validate_params(method, params)
    return method, params
