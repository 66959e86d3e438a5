"""Business processes: ``bizproc.workflow.template.list``, ``bizproc.workflow.start`` and
``bizproc.workflow.instances`` (api-reference/bizproc/template/bizproc-workflow-template-list.md,
bizproc-workflow-start.md, bizproc-workflow-instances.md). All three are for administrators.

Templates are designed in the portal's editor, not over REST, so the sandbox ships the few a
fresh portal would plausibly have: a deal approval (started by hand, with an ``Approver``
parameter) and a lead check that runs on creation. Starting one checks what the docs' error
table checks (template, ``DOCUMENT_ID`` shape, that the document type matches the template and
the record exists) and records a running instance; nothing is executed.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .. import docstore
from ..args import arg, positive_int, upper_keys
from ..context import CallContext
from ..crm_fields import ENTITIES
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError
from ..filters import select_list
from ..registry import method

KIND = "workflow"
#: When the shipped templates were last edited (a fixed moment keeps answers reproducible).
_SHIPPED = 1_700_000_000
#: The CRM document classes and their ``DOCUMENT_ID`` element prefixes.
_CRM_DOCUMENTS = {
    "CCrmDocumentLead": "lead",
    "CCrmDocumentDeal": "deal",
    "CCrmDocumentContact": "contact",
    "CCrmDocumentCompany": "company",
}
TEMPLATES: tuple[dict[str, Any], ...] = (
    {
        "ID": 1,
        "MODULE_ID": "crm",
        "ENTITY": "CCrmDocumentDeal",
        "DOCUMENT_TYPE": "DEAL",
        "AUTO_EXECUTE": 0,
        "NAME": "Deal approval",
        "TEMPLATE": [{"Type": "SequentialWorkflowActivity", "Name": "Template"}],
        "PARAMETERS": {
            "Approver": {"Name": "Approver", "Type": "user", "Required": 1, "Multiple": 0}
        },
        "VARIABLES": [],
        "CONSTANTS": [],
        "MODIFIED": _SHIPPED,
        "IS_MODIFIED": "N",
        "USER_ID": 1,
        "SYSTEM_CODE": "",
    },
    {
        "ID": 2,
        "MODULE_ID": "crm",
        "ENTITY": "CCrmDocumentLead",
        "DOCUMENT_TYPE": "LEAD",
        "AUTO_EXECUTE": 1,
        "NAME": "New lead check",
        "TEMPLATE": [{"Type": "SequentialWorkflowActivity", "Name": "Template"}],
        "PARAMETERS": [],
        "VARIABLES": [],
        "CONSTANTS": [],
        "MODIFIED": _SHIPPED,
        "IS_MODIFIED": "N",
        "USER_ID": 1,
        "SYSTEM_CODE": "",
    },
)
_TEMPLATE_FIELDS = tuple(TEMPLATES[0])
_INSTANCE_FIELDS = (
    "ID",
    "MODIFIED",
    "OWNED_UNTIL",
    "MODULE_ID",
    "ENTITY",
    "DOCUMENT_ID",
    "STARTED",
    "STARTED_BY",
    "TEMPLATE_ID",
)


def _shown(row: dict[str, Any], select: list[str], default: list[str]) -> dict[str, Any]:
    """The selected fields in the docs' shapes: ids as strings, dates in ISO 8601."""
    names = [s.upper() for s in select] or default
    view: dict[str, Any] = {}
    for name in names:
        value = row.get(name)
        if name in ("MODIFIED", "STARTED") and value is not None:
            value = iso_datetime(value)
        elif name in ("ID", "USER_ID", "TEMPLATE_ID", "STARTED_BY") and value is not None:
            value = str(value)
        view[name] = value
    return view


def _listing(
    params: dict[str, Any], rows: list[dict[str, Any]], fields: tuple[str, ...], default: list
) -> Page:
    conditions = arg(params, "FILTER")
    chosen = [r for r in rows if docstore.matches(r, conditions, fields)]
    docstore.sort(chosen, arg(params, "ORDER"), fields)
    select = select_list(arg(params, "SELECT"))
    unknown = [s for s in select if s.upper() not in fields]
    if unknown:
        raise PortalError("ERROR_ARGUMENT", f"Unknown field {unknown[0]} in SELECT")
    return docstore.page([_shown(r, select, default) for r in chosen], arg(params, "start"))


@method("bizproc.workflow.template.list", scope="bizproc", admin_only=True)
def template_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    return _listing(params, [dict(t) for t in TEMPLATES], _TEMPLATE_FIELDS, ["ID"])


def _document(ctx: CallContext, raw: Any) -> tuple[str, str, str]:
    """(module, class, element) of a ``DOCUMENT_ID`` naming an existing CRM record."""
    parts = [str(p) for p in raw] if isinstance(raw, list) else []
    if len(parts) != 3 or not all(parts):
        raise PortalError("", "Wrong DOCUMENT_ID!")
    module, entity_class, element = parts
    code = _CRM_DOCUMENTS.get(entity_class)
    if module != "crm" or code is None:
        raise PortalError("", "Incorrect document type!")
    prefix, _, number = element.rpartition("_")
    record_id = positive_int(number)
    if prefix != code.upper() or record_id is None:
        raise PortalError("", "Wrong DOCUMENT_ID!")
    if ctx.portal.store.get(ENTITIES[code].table, record_id) is None:
        raise PortalError("", "Wrong DOCUMENT_ID!")
    return module, entity_class, element


@method("bizproc.workflow.start", scope="bizproc", admin_only=True)
def start(ctx: CallContext, params: dict[str, Any]) -> str:
    query = upper_keys(params)
    template_id = positive_int(query.get("TEMPLATE_ID"))
    if template_id is None:
        raise PortalError("ERROR_WRONG_WORKFLOW_ID", "Empty TEMPLATE_ID")
    template = next((t for t in TEMPLATES if t["ID"] == template_id), None)
    if template is None:
        raise PortalError("ERROR_WRONG_WORKFLOW_ID", "Template not found")
    module, entity_class, element = _document(ctx, query.get("DOCUMENT_ID"))
    if entity_class != template["ENTITY"]:
        raise PortalError("", "Template type and DOCUMENT_ID mismatch!")
    now = int(time.time())
    parameters = query.get("PARAMETERS")
    instance = {
        "ID": f"{secrets.token_hex(7)}.{secrets.randbelow(10**8):08d}",
        "MODIFIED": now,
        "OWNED_UNTIL": None,
        "MODULE_ID": module,
        "ENTITY": entity_class,
        "DOCUMENT_ID": element,
        "STARTED": now,
        "STARTED_BY": ctx.auth.user_id,
        "TEMPLATE_ID": template_id,
        "PARAMETERS": parameters if isinstance(parameters, dict) else {},
    }
    docstore.add(ctx.portal.store, KIND, instance, id_key="SEQ")
    return str(instance["ID"])


@method("bizproc.workflow.instances", scope="bizproc", admin_only=True)
def instances(ctx: CallContext, params: dict[str, Any]) -> Page:
    rows = docstore.find(ctx.portal.store, KIND)
    rows.sort(key=lambda r: r["MODIFIED"], reverse=True)  # default order: MODIFIED desc
    return _listing(params, rows, _INSTANCE_FIELDS, ["ID", "MODIFIED", "OWNED_UNTIL"])


@method("bizproc.workflow.instance.list", scope="bizproc", admin_only=True)
def instance_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    """The old alias of ``bizproc.workflow.instances`` (same parameters and answer)."""
    return instances(ctx, params)
