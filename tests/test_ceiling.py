"""The operator's ceiling: the command line narrows what the environment and env file allow, and
never widens it. Every refusal is exit 3 with nothing sent to the portal; no hint the code can
emit names a flag that lifts a guard.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli
from conftest import ROOT, Sandbox, write_env

SKILL = ROOT / "skills" / "bitrix24-agent"
PACKAGE = SKILL / "scripts" / "b24agent"
WIDENING = ("allow-unlisted", "no-audit", "no-mask-secrets", "no-idempotency", "audit-file")
ADD = ("crm.lead.add", "--params", json.dumps({"fields": {"TITLE": "ceiling"}}))


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"B24_WEBHOOK_URL": portal.webhook_url})


def _refused(portal: Sandbox, cli: Cli, *args: str, **env: str) -> dict[str, str]:
    """Run ``args``; assert exit 3, no output and no request; return the error object."""
    before = portal.stats()["requests"]
    run = cli(*args, **env)
    assert run.code == 3, run.err
    assert run.out == ""
    assert portal.stats()["requests"] == before, "a refused call reached the portal"
    return run.error()


def _leads(portal: Sandbox) -> list[dict]:
    return portal.rest("crm.lead.list", {"select": ["ID", "TITLE"]}).json()["result"]


# --- packs and allowlist intersect with the operator's --------------------------------------------


def test_wider_packs_than_the_operator_set_are_refused(portal: Sandbox, cli: Cli) -> None:
    error = _refused(portal, cli, *ADD, "--packs", "core", "--confirm-write", B24_PACKS="none")
    assert error["code"] == "OUTSIDE_OPERATOR_CEILING"
    assert "B24_PACKS" in error["hint"]
    comms = ("im.message.add", "--params", '{"DIALOG_ID": "1", "MESSAGE": "hi"}', "--confirm-write")
    error = _refused(portal, cli, *comms, "--packs", "core,comms", B24_PACKS="core")
    assert error["code"] == "OUTSIDE_OPERATOR_CEILING" and "'comms'" in error["hint"]
    assert _leads(portal) == []


def test_the_env_file_is_the_operators_too(portal: Sandbox, cli: Cli) -> None:
    (cli.cwd / "ops.env").write_text("B24_PACKS=none\nB24_METHOD_ALLOWLIST=user.current\n")
    error = _refused(
        portal, cli, *ADD, "--env-file", "ops.env", "--packs", "core", "--confirm-write"
    )
    assert error["code"] == "OUTSIDE_OPERATOR_CEILING"
    assert cli("user.current", "--env-file", "ops.env", "--packs", "core").code == 0


def test_allowlist_flag_cannot_reach_past_the_operators(portal: Sandbox, cli: Cli) -> None:
    ops = {"B24_PACKS": "none", "B24_METHOD_ALLOWLIST": "crm.lead.*"}
    error = _refused(portal, cli, "crm.deal.list", "--method-allowlist", "crm.*", **ops)
    assert error["code"] == "OUTSIDE_OPERATOR_CEILING"
    assert cli("crm.lead.list", "--method-allowlist", "crm.*", **ops).code == 0
    # An unknown method is inside the ceiling only when the operator's allowlist names it.
    unknown = ("vendor.widget.add", "--method-allowlist", "vendor.*", "--confirm-write")
    assert _refused(portal, cli, *unknown)["code"] == "METHOD_UNLISTED"


def test_narrowing_within_the_ceiling_works(portal: Sandbox, cli: Cli) -> None:
    ops = {"B24_PACKS": "core,comms"}
    error = _refused(
        portal, cli, "im.chat.get", "--params", '{"DIALOG_ID": "1"}', "--packs", "core", **ops
    )
    assert error["code"] == "METHOD_NOT_ALLOWED"
    assert cli("crm.lead.list", "--packs", "core", **ops).code == 0


# --- widening flags need the operator's consent, by name ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("vendor.widget.add", "--allow-unlisted", "--confirm-write"),
        ("crm.lead.list", "--no-audit"),
        ("crm.lead.list", "--no-mask-secrets"),
        (*ADD, "--no-idempotency", "--confirm-write"),
        ("crm.lead.list", "--audit-file", "elsewhere.jsonl"),
    ],
    ids=WIDENING,
)
def test_widening_flag_without_consent_is_refused(
    portal: Sandbox, cli: Cli, args: tuple[str, ...]
) -> None:
    error = _refused(portal, cli, *args)
    assert error["code"] == "FLAG_NOT_ALLOWED" and "B24_ALLOW_FLAGS" in error["hint"]
    # Consent for another flag is not consent for this one.
    other = next(f for f in WIDENING if f"--{f}" not in args)
    assert _refused(portal, cli, *args, B24_ALLOW_FLAGS=other)["code"] == "FLAG_NOT_ALLOWED"
    assert _leads(portal) == []


def test_refused_no_audit_is_itself_audited(portal: Sandbox, cli: Cli) -> None:
    _refused(portal, cli, "crm.lead.list", "--no-audit")
    (log,) = cli.state.glob("*/audit.jsonl")
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["outcome"] == "refused" and line["error"] == "FLAG_NOT_ALLOWED"


def test_audit_file_naming_the_operators_log_is_no_widening(portal: Sandbox, cli: Cli) -> None:
    own = cli.state / "operator-audit.jsonl"
    run = cli("crm.lead.list", "--audit-file", str(own), B24_AUDIT_FILE=str(own))
    assert run.code == 0 and own.exists()


def test_consented_flag_works(portal: Sandbox, cli: Cli) -> None:
    run = cli("crm.lead.list", "--no-audit", B24_ALLOW_FLAGS="no-audit,no-idempotency")
    assert run.code == 0 and list(cli.state.glob("*/audit.jsonl")) == []


def test_unknown_allow_flags_name_is_a_config_error(cli: Cli) -> None:
    run = cli("crm.lead.list", B24_ALLOW_FLAGS="no-audit,everything")
    assert run.code == 4 and "B24_ALLOW_FLAGS" in run.error()["message"]


# --- the operator's env file holds whatever other file a command names (review F5) ---------------


@pytest.fixture
def ceiling_cli(cli: Cli) -> Cli:
    """The operator's ceiling in the state folder's .env; the portal comes from the environment."""
    cli.state.mkdir(parents=True, exist_ok=True)
    write_env(cli.state / ".env", "B24_READ_ONLY=1\nB24_PACKS=core\n")
    return cli


def test_a_projects_env_file_does_not_drop_the_ceiling(portal: Sandbox, ceiling_cli: Cli) -> None:
    cli = ceiling_cli
    (cli.cwd / ".env").write_text("NODE_ENV=development\nB24_READ_ONLY=0\nB24_PACKS=core,comms\n")
    assert _refused(portal, cli, *ADD, "--confirm-write")["code"] == "READ_ONLY"
    comms = ("im.message.add", "--params", '{"DIALOG_ID": "1", "MESSAGE": "hi"}', "--confirm-write")
    error = _refused(portal, cli, *comms, "--packs", "comms")
    assert error["code"] == "OUTSIDE_OPERATOR_CEILING" and "state/.env" in error["message"]
    assert _leads(portal) == []


def test_a_named_env_file_does_not_drop_the_ceiling(portal: Sandbox, ceiling_cli: Cli) -> None:
    cli = ceiling_cli
    portal.admin("seed", {"crm.lead": 1})
    (lead,) = _leads(portal)
    (cli.cwd / "any.env").write_text("NODE_ENV=development\nB24_READ_ONLY=0\n")
    delete = ("crm.lead.delete", "--params", json.dumps({"id": lead["ID"]}))
    error = _refused(portal, cli, *delete, "--env-file", "any.env", "--confirm-destructive")
    assert error["code"] == "READ_ONLY"
    assert _leads(portal) == [lead]
    assert cli("crm.lead.list", "--env-file", "any.env").code == 0  # reads still run


def test_an_env_file_moving_the_audit_log_needs_consent(portal: Sandbox, cli: Cli) -> None:
    hidden = cli.tmp_path / "hidden.jsonl"
    (cli.cwd / "quiet.env").write_text(f"B24_AUDIT_FILE={hidden}\n")
    error = _refused(portal, cli, "crm.lead.list", "--env-file", "quiet.env")
    assert error["code"] == "FLAG_NOT_ALLOWED" and "quiet.env" in error["message"]
    assert not hidden.exists()
    allowed = cli("crm.lead.list", "--env-file", "quiet.env", B24_ALLOW_FLAGS="audit-file")
    assert allowed.code == 0 and hidden.exists()


# --- read-only ---------------------------------------------------------------------------------


def _write_plan(cli: Cli) -> str:
    run = cli(*ADD, "--plan-only")
    assert run.code == 0, run.err
    return run.json()["plan"]["id"]


def test_read_only_refuses_every_write(portal: Sandbox, cli: Cli, tmp_path: Path) -> None:
    portal.admin("seed", {"crm.lead": 1})
    (lead,) = _leads(portal)
    plan_id = _write_plan(cli)  # made before the operator turned read-only on
    batch_file = tmp_path / "calls.jsonl"
    batch_file.write_text(
        json.dumps({"method": "crm.lead.list", "params": {}})
        + "\n"
        + json.dumps(
            {"method": "crm.lead.update", "params": {"id": lead["ID"], "fields": {"TITLE": "x"}}}
        )
        + "\n"
    )
    delete = ("crm.lead.delete", "--params", json.dumps({"id": lead["ID"]}))
    batch = ("batch", "--params", json.dumps({"cmd": {"a": f"crm.lead.delete?id={lead['ID']}"}}))
    attempts = [
        (*ADD, "--confirm-write"),
        (*delete, "--confirm-destructive"),
        (*batch, "--confirm-destructive"),
        ("--batch-file", str(batch_file), "--confirm-write"),
        (*ADD, "--plan-only"),
        ("--execute-plan", plan_id),
    ]
    for args in attempts:
        assert _refused(portal, cli, *args, B24_READ_ONLY="1")["code"] == "READ_ONLY"
        assert _refused(portal, cli, "--read-only", *args)["code"] == "READ_ONLY"
    assert _leads(portal) == [lead]
    assert cli("crm.lead.list", B24_READ_ONLY="1").code == 0
    assert cli("--read-only", "crm.lead.get", "--params", json.dumps({"id": lead["ID"]})).code == 0
    # The plan was refused before anything ran, so it is still there to run once allowed.
    assert cli("--execute-plan", plan_id).code == 0
    assert len(_leads(portal)) == 2


# --- no hint names a widening flag -------------------------------------------------------------


def _strings(node: ast.AST, assigned: dict[str, list[ast.AST]], seen: set[str]) -> Iterator[str]:
    """Every string constant in ``node``, following names to what the module assigns them."""
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child.value
        elif isinstance(child, ast.Name) and child.id not in seen:
            seen.add(child.id)
            for value in assigned.get(child.id, []):
                yield from _strings(value, assigned, seen)


def _says(name: str) -> bool:
    return any(word in name.lower() for word in ("hint", "note", "needs"))


def _hint_roots(tree: ast.AST) -> Iterator[ast.AST]:
    """Expressions that become a hint or a note: ``hint=...``, ``x.hint = ...``, ``notes=``,
    ``with_hint(...)``, the code tables of errors.py, literal JSON error lines (the warm
    client's), and a note's pieces (``again = ...`` inside ``def note``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and _says(node.name):
            yield node
        elif isinstance(node, ast.keyword) and _says(node.arg or ""):
            yield node.value
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = (
                    target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                )
                if _says(name) or (name.isupper() and isinstance(node.value, ast.Dict)):
                    yield node.value
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "with_hint":
            yield from node.args
        elif isinstance(node, ast.Constant) and '"hint"' in str(node.value):
            yield node


def _every_hint() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sandbox" in path.relative_to(PACKAGE).parts:
            continue  # the local portal's own errors, not ours
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.value)
        for root in _hint_roots(tree):
            for text in _strings(root, assigned, set()):
                found.append((f"{path.relative_to(PACKAGE)}:{getattr(root, 'lineno', 0)}", text))
    return found


def test_no_hint_names_a_widening_flag() -> None:
    hints = _every_hint()
    where = {place.split(":")[0] for place, _ in hints}
    # Not vacuous: the scan reaches the hints of every layer.
    assert len(hints) > 150 and {"errors.py", "guard/policy.py", "cli/warm/launch.py"} <= where
    assert any("B24_ALLOW_FLAGS" in text for _, text in hints)
    bad = [
        (place, text)
        for place, text in hints
        for flag in WIDENING
        if flag in text or flag.replace("-", "_") in text
    ]
    assert bad == []


def test_the_policy_refusals_hints_seen_at_runtime(portal: Sandbox, cli: Cli) -> None:
    runs = [
        cli("vendor.widget.add", "--confirm-write"),
        cli("im.message.add", "--params", '{"DIALOG_ID": "1", "MESSAGE": "x"}', "--confirm-write"),
        cli(*ADD),
        cli(*ADD, "--confirm-write", "--allow-unlisted"),
    ]
    hints = [run.error()["hint"] for run in runs]
    assert all(run.code == 3 for run in runs) and all(hints)
    assert not [h for h in hints for flag in WIDENING if flag in h]


# --- runtime prompts ----------------------------------------------------------------------------


def test_allowed_tools_preapprove_only_read_only_calls() -> None:
    """A runtime asks its human before anything SKILL.md does not pre-approve: only ``Read``
    and commands that start ``b24 --read-only`` (refused writes are tested above)."""
    parser = pytest.importorskip("skills_ref.parser")
    meta, _ = parser.parse_frontmatter((SKILL / "SKILL.md").read_text(encoding="utf-8"))
    entries = re.findall(r"(\w+)(?:\(([^)]*)\))?", meta["allowed-tools"])
    bash = [pattern for tool, pattern in entries if tool == "Bash"]
    assert bash and all(p.startswith("b24 --read-only") for p in bash)
    assert {tool for tool, _ in entries} <= {"Bash", "Read"}
