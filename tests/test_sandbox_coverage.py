"""Every method the skill recommends can be rehearsed on the sandbox, or the skill says it cannot.

An agent following SKILL.md, a chains file or a catalog's "Start here" table must not meet
``ERROR_METHOD_NOT_FOUND`` on the sandbox: each method named there is served by
``sandbox_portal.py`` or is marked "not in the sandbox" where it is named (a table row's notes;
in prose, right after the name). The shapes of the served ones are pinned by the sandbox tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from b24agent import catalog
from b24agent.sandbox import methods  # noqa: F401  (registers every handler)
from b24agent.sandbox.registry import all_methods
from conftest import ROOT

from tools.build_references import NOT_IN_SANDBOX

SKILL = ROOT / "skills" / "bitrix24-agent"
REFS = SKILL / "references"
SERVED = frozenset(spec.name for spec in all_methods())
ROW = re.compile(r"^\| `([a-z0-9_.]+)` \|.*\| ([^|]*) \|$", re.M)
NAME = re.compile(r"(?<![\w./$-])([a-z][a-z0-9_]*(?:\.[A-Za-z0-9_]+)+)(?![\w/])")
#: How far after a name in prose its "not in the sandbox" may stand.
NEAR = 80


@pytest.mark.parametrize("path", sorted(REFS.glob("catalog-*.md")), ids=lambda p: p.name)
def test_catalog_start_here_rows_are_served_or_marked(path: Path) -> None:
    rows = ROW.findall(path.read_text(encoding="utf-8"))
    assert rows
    wrong = [
        name for name, notes in rows if (name in SERVED) == (NOT_IN_SANDBOX in notes)
    ]  # served and marked, or neither
    assert wrong == []


def _prose_files() -> list[Path]:
    return [SKILL / "SKILL.md", *sorted(REFS.glob("chains-*.md"))]


@pytest.mark.parametrize("path", _prose_files(), ids=lambda p: p.name)
def test_methods_named_in_skill_and_chains_are_served_or_marked(path: Path) -> None:
    text = " ".join(path.read_text(encoding="utf-8").split())
    named = 0
    unmarked = []
    for match in NAME.finditer(text):
        name = match.group(1).lower()
        if not catalog.explain(name)["known"]:
            continue  # a file name, a setting, a domain
        named += 1
        after = text[match.end() : match.end() + NEAR]
        if name not in SERVED and NOT_IN_SANDBOX not in after:
            unmarked.append(name)
    assert named and unmarked == []


def test_the_sandbox_serves_the_methods_the_issue_found_missing() -> None:
    wanted = {
        "crm.status.list",
        "crm.status.entity.items",
        "im.dialog.get",
        "im.recent.list",
        "im.dialog.messages.get",
        "im.search.chat.list",
        "crm.activity.list",
    }
    assert wanted <= SERVED
