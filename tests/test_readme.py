"""The README tells the truth about the programs it documents.

Flags and exit codes come from each script's real ``--help`` (run as a subprocess, the way a
user sees it), so a flag added to a parser without a README row, or a README row for a flag
that was renamed away, fails here. The sandbox's admin operations and the ``B24_*`` variables
the README names are checked against the code the same way.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "skills" / "bitrix24-agent" / "scripts"
README = (ROOT / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
VARIABLE = re.compile(r"\bB24_[A-Z][A-Z0-9_]*")
#: script -> (its flags section, its exit codes section) in the README.
PROGRAMS = {
    "bitrix24_client.py": ("Client flags", "Client exit codes"),
    "offline_sync_worker.py": ("Worker flags", "Worker exit codes"),
    "sandbox_portal.py": ("Sandbox flags", "Sandbox exit codes"),
}


@functools.cache
def help_text(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_flags(text: str) -> set[str]:
    """Flags of the option list: lines ``  --flag ARG   help`` (the part before the help)."""
    flags: set[str] = set()
    for line in text.splitlines():
        if re.match(r"^ {2}-", line):
            flags.update(FLAG.findall(re.split(r"\s{2,}", line.strip())[0]))
    return flags


def help_exit_codes(text: str) -> set[int]:
    """Codes after ``exit codes:``: inline (``0 stopped cleanly, 2 ...``) or one per line."""
    _, _, rest = text.partition("exit codes:")
    assert rest, "--help has no exit codes"
    first, *lines = rest.split("\n")
    codes = {int(code) for code in re.findall(r"\b(\d+) [a-z]", first)}
    for line in lines:
        if line.strip() and not line.startswith(" "):
            break
        match = re.match(r"^ {2}(\d+) {2,}\S", line)
        if match:
            codes.add(int(match.group(1)))
    return codes


def readme_section(title: str) -> str:
    """The text under ``### title`` up to the next heading."""
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#{{2,3}} \S|\Z)", README, re.S | re.M)
    assert match, f"README has no '### {title}' section"
    return match.group(1)


def first_cells(section: str) -> list[str]:
    """The first cell of every table row except the header and the separator."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [row.split("|")[1].strip() for row in rows[2:]]


@pytest.mark.parametrize("script", sorted(PROGRAMS))
def test_every_help_flag_has_exactly_one_readme_row(script: str) -> None:
    documented: list[str] = []
    for cell in first_cells(readme_section(PROGRAMS[script][0])):
        documented += FLAG.findall(cell)
    shown = help_flags(help_text(script))
    assert len(shown) > 5, "the --help parser found too few flags to be trusted"
    assert sorted(shown - set(documented)) == [], "flags in --help missing from the README"
    assert sorted(set(documented) - shown) == [], "README rows for flags --help lacks"
    assert len(documented) == len(set(documented)), "a flag has two README rows"


@pytest.mark.parametrize("script", sorted(PROGRAMS))
def test_every_help_exit_code_is_in_the_readme_and_no_other(script: str) -> None:
    rows = first_cells(readme_section(PROGRAMS[script][1]))
    documented = {int(cell) for cell in rows}
    shown = help_exit_codes(help_text(script))
    assert 0 in shown and len(shown) >= 3
    assert documented == shown


def broker_help(command: str) -> str:
    """``b24-broker COMMAND --help`` (the broker is run as a module: it has no skill script)."""
    done = subprocess.run(
        [sys.executable, "-m", "b24agent.broker", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SCRIPTS,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_names_no_flag_that_no_program_has() -> None:
    known = set().union(*(help_flags(help_text(s)) for s in (*PROGRAMS, "mcp_server.py")))
    known |= set().union(*(help_flags(broker_help(c)) for c in ("serve", "approve", "list")))
    assert sorted(set(FLAG.findall(README)) - known) == []


def test_the_readme_names_no_variable_the_code_does_not_read() -> None:
    sources = [*(SCRIPTS / "b24agent").rglob("*.py"), *(ROOT / "tests").glob("*.py")]
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources if p.name != "test_readme.py")
    named = set(VARIABLE.findall(README))
    assert {"B24_WEBHOOK_URL", "B24_RUN_INTEGRATION"} <= named
    assert sorted(named - set(VARIABLE.findall(code))) == []


def test_every_sandbox_admin_operation_is_documented() -> None:
    import b24agent.cli.sandbox  # noqa: F401  (registers every method handler and admin op)
    from b24agent.sandbox.admin import ADMIN_OPS

    section = readme_section("Sandbox admin surface")
    documented = set(re.findall(r"`(GET|POST) ([a-z-]+)`", section))
    assert documented == set(ADMIN_OPS)


def test_the_readme_install_paths_cover_every_agent() -> None:
    section = re.search(r"^## Install the skill into an agent\n(.*?)^## ", README, re.S | re.M)
    assert section
    for path in (
        "~/.openclaw/skills/",
        "<workspace>/skills/",
        "~/.moltbot/skills/",
        ".agents/skills/",
        "~/.agents/skills/",
        ".claude/skills/",
        "~/.claude/skills/",
    ):
        assert path in section.group(1), path
