"""Every schema the package validates with is itself a valid schema.

``state.read_json`` skips jsonschema's own check of the schema on each read (3 ms a call), so
this is where a broken schema is caught: a typo such as ``"type": "obejct"`` would otherwise
make every state file of that kind fail or pass for the wrong reason.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from b24agent.guard import auditchain, idempotency, plans
from b24agent.rest import schemas
from b24agent.worker import checkpoint
from conftest import ROOT

SCHEMA_FOLDER = ROOT / "skills" / "bitrix24-agent" / "scripts" / "b24agent" / "rest" / "schemas"
#: methods.json maps method patterns to schema names; it is a table, not a schema.
BUNDLED = sorted(p.stem for p in SCHEMA_FOLDER.glob("*.json") if p.stem != "methods")
STATE_CONSTANTS = {
    "auditchain head": auditchain._HEAD_SCHEMA,
    "idempotency record": idempotency._RECORD_SCHEMA,
    "plan key": plans._KEY_SCHEMA,
    "plan": plans._PLAN_SCHEMA,
    "worker checkpoint": checkpoint.SCHEMA,
}


def _check(schema: dict[str, Any]) -> None:
    jsonschema.validators.validator_for(schema).check_schema(schema)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_schema_is_valid(name: str) -> None:
    _check(schemas.load_schema(name))


@pytest.mark.parametrize("name", sorted(STATE_CONSTANTS))
def test_state_schema_constant_is_valid(name: str) -> None:
    _check(STATE_CONSTANTS[name])


def test_a_broken_schema_is_caught() -> None:
    with pytest.raises(jsonschema.SchemaError):
        _check({"type": "obejct"})
