"""The skill folder is a valid Agent Skill, tells the truth about the code, works copied alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Sandbox

SKILL = ROOT / "skills" / "bitrix24-agent"
PACKAGE = SKILL / "scripts" / "b24agent"
SCRIPTS = ("bitrix24_client.py", "offline_sync_worker.py", "sandbox_portal.py")
ALLOWED_KEYS = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
TRIGGERS = ("Bitrix24", "Битрикс24", "CRM", "leads", "deals", "tasks", "webhook", "OAuth")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
VARIABLE = re.compile(r"\bB24_[A-Z][A-Z0-9_]*")


def _frontmatter() -> tuple[dict[str, Any], str]:
    """Parsed the way the validator parses it (strictyaml; skills-ref needs Python 3.11+)."""
    parser = pytest.importorskip("skills_ref.parser")
    return parser.parse_frontmatter((SKILL / "SKILL.md").read_text(encoding="utf-8"))


def _docs() -> dict[Path, str]:
    """SKILL.md and every reference file: the text agents read."""
    paths = [SKILL / "SKILL.md", *sorted((SKILL / "references").glob("*.md"))]
    return {path: path.read_text(encoding="utf-8") for path in paths}


def _variables_in_code() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


@pytest.fixture(scope="module")
def helps() -> dict[str, set[str]]:
    """Flags each script's --help lists."""
    flags = {}
    for script in SCRIPTS:
        done = subprocess.run(
            [sys.executable, str(SKILL / "scripts" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        flags[script] = set(FLAG.findall(done.stdout))
    return flags


def test_skills_ref_validator_accepts_the_folder() -> None:
    validator = pytest.importorskip("skills_ref.validator")
    assert validator.validate(SKILL) == []


def test_frontmatter_has_only_spec_keys_and_a_triggering_description() -> None:
    meta, _ = _frontmatter()
    assert set(meta) <= ALLOWED_KEYS and {"name", "description", "metadata"} <= set(meta)
    assert meta["name"] == SKILL.name
    description = meta["description"]
    assert 200 <= len(description) <= 1024
    assert "<" not in description and ">" not in description
    missing = [word for word in (*TRIGGERS, "offline event") if word not in description]
    assert not missing


def test_body_is_short() -> None:
    _, body = _frontmatter()
    assert len(body.splitlines()) < 300


def test_every_variable_the_code_reads_is_documented_in_settings_md() -> None:
    """The frontmatter is too small for them (test_runtimes.py); agents find them here."""
    documented = set(VARIABLE.findall((SKILL / "references" / "settings.md").read_text()))
    missing = _variables_in_code() - documented
    assert not missing, f"add to references/settings.md: {sorted(missing)}"


def test_variables_named_in_the_docs_exist_in_the_code() -> None:
    known = _variables_in_code()
    for path, text in _docs().items():
        unknown = set(VARIABLE.findall(text)) - known
        assert not unknown, f"{path.name}: {sorted(unknown)}"


def test_every_reference_named_in_skill_md_exists() -> None:
    text = (SKILL / "SKILL.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\]\((references/[^)]+\.md)\)", text))
    named |= set(re.findall(r"`(references/[\w.-]+\.md)`", text))
    assert {"references/packs.md", "references/bitrix24.md"} <= named
    assert [n for n in sorted(named) if not (SKILL / n).is_file()] == []
    for path, body in _docs().items():
        for target in re.findall(r"\]\(([\w.-]+\.md)\)", body):
            assert (path.parent / target).is_file(), f"{path.name} links {target}"


def test_commands_name_existing_scripts_relative_to_the_skill_folder() -> None:
    text = (SKILL / "SKILL.md").read_text(encoding="utf-8")
    scripts = set(re.findall(r"python3 (scripts/[\w.]+\.py)", text))
    assert scripts == {f"scripts/{s}" for s in SCRIPTS}
    ours = "|".join(re.escape(s) for s in SCRIPTS)
    assert re.findall(rf"python3 (\S*(?:{ours}))", text) == re.findall(
        rf"python3 (scripts/(?:{ours}))", text
    )


def test_every_flag_in_the_docs_exists_in_the_scripts_help(helps: dict[str, set[str]]) -> None:
    every = set().union(*helps.values())
    problems = []
    for path, text in _docs().items():
        for number, line in enumerate(text.splitlines(), 1):
            scripts = [s for s in SCRIPTS if s in line]
            allowed = set().union(*(helps[s] for s in scripts)) if scripts else every
            problems += [
                f"{path.name}:{number}: {flag}"
                for flag in FLAG.findall(line)
                if flag not in allowed
            ]
    assert problems == []


# --- the folder copied alone ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("installed") / "bitrix24-agent"
    shutil.copytree(SKILL, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return target


def _isolated(
    args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run python without site processing, so the editable install's path entry is absent;
    third-party packages come from the venv's site-packages directly."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_environment_used_for_the_copy_cannot_see_the_repository_package(
    lone_copy: Path, tmp_path: Path
) -> None:
    assert _isolated(["-c", "import b24agent"], tmp_path).returncode == 1
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import b24agent; print(b24agent.__file__)"
    done = _isolated(["-c", probe, str(lone_copy / "scripts")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(lone_copy)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_of_the_lone_copy_show_help(script: str, lone_copy: Path, tmp_path: Path) -> None:
    done = _isolated([str(lone_copy / "scripts" / script), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exit codes" in done.stdout


def test_lone_copy_explains_from_its_bundled_catalog(lone_copy: Path, tmp_path: Path) -> None:
    client = str(lone_copy / "scripts" / "bitrix24_client.py")
    done = _isolated([client, "--explain", "crm.lead.add"], tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["method"], info["risk"], info["pack"]) == ("crm.lead.add", "write", "core")
    assert "--confirm-write" in info["needs"]


def test_lone_copy_reads_and_writes_the_sandbox(
    lone_copy: Path, tmp_path: Path, portal: Sandbox
) -> None:
    client = str(lone_copy / "scripts" / "bitrix24_client.py")
    env = {"B24_WEBHOOK_URL": portal.webhook_url, "B24_STATE_DIR": str(tmp_path / "state")}
    me = _isolated([client, "user.current", "--output", "result"], tmp_path, env)
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["ID"] == str(portal.webhook["user_id"])

    params = json.dumps({"fields": {"TITLE": "from the lone copy"}})
    blocked = _isolated([client, "crm.lead.add", "--params", params], tmp_path, env)
    assert blocked.returncode == 3
    assert json.loads(blocked.stderr)["error"]["code"] == "CONFIRMATION_REQUIRED"

    added = _isolated(
        [client, "crm.lead.add", "--params", params, "--confirm-write", "--output", "result"],
        tmp_path,
        env,
    )
    assert added.returncode == 0, added.stderr
    lead = portal.rest("crm.lead.get", {"id": json.loads(added.stdout)}).json()["result"]
    assert lead["TITLE"] == "from the lone copy"


# --- --install-skill: only the skill, swapped in whole (review7 L6) -------------------------------

#: A webhook as it would sit in an env file someone left in the skill folder.
LEFT_BEHIND = "B24_WEBHOOK_URL=https://portal.example/rest/1/leftbehindcode123/\n"


@pytest.fixture
def cluttered_copy(tmp_path: Path) -> Path:
    """A skill folder as a person leaves it: the MCP help's ``--env-file portal.env`` there,
    an ``.env.local``, and a state folder with a token store inside."""
    copy = tmp_path / "src" / "bitrix24-agent"
    shutil.copytree(SKILL, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (copy / "portal.env").write_text(LEFT_BEHIND)
    (copy / ".env.local").write_text(LEFT_BEHIND)
    (copy / "scripts" / "portal.env").write_text(LEFT_BEHIND)
    (copy / "state" / "portal").mkdir(parents=True)
    (copy / "state" / "portal" / "tokens.json").write_text('{"access_token": "leftbehindcode123"}')
    (copy / "scripts" / "b24agent" / ".state").mkdir()
    (copy / "scripts" / "b24agent" / ".state" / "t.json").write_text('"leftbehindcode123"')
    return copy


def _install(copy: Path, skills: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    """``--install-skill skills`` run from ``copy`` (under ``wrapper``, e.g. strace)."""
    script = copy / "scripts" / "bitrix24_client.py"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(skills.parent),
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc renames: the swap's are the only ones
        "B24_SERVER": "off",
    }
    command = [*wrapper, sys.executable, "-S", str(script), "--install-skill", str(skills)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _tracked(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)
        and not p.name.endswith(".pyc")
    }


def test_install_skill_copies_the_skill_and_no_env_file_or_state(
    cluttered_copy: Path, tmp_path: Path
) -> None:
    """Before, only ``.env`` was skipped: portal.env, .env.local and a state folder holding a
    webhook or tokens were copied into the runtime's skills folder, which it shows the model."""
    skills = tmp_path / "skills"
    done = _install(cluttered_copy, skills)
    assert done.returncode == 0, done.stderr
    installed = skills / "bitrix24-agent"
    assert _tracked(installed) == _tracked(SKILL)
    leaked = [
        p for p in installed.rglob("*") if p.is_file() and "leftbehindcode123" in p.read_text()
    ]
    assert leaked == []


def test_install_skill_onto_the_folder_it_runs_from_is_refused_and_deletes_nothing(
    cluttered_copy: Path,
) -> None:
    """Before, the folder was swapped with a filtered copy of itself and the original deleted:
    the env file, the state folder, a person's notes, gone without a word (rc 0)."""
    (cluttered_copy / "notes").mkdir()
    (cluttered_copy / "notes" / "mine.txt").write_text("hi\n")
    before = sorted(p.relative_to(cluttered_copy) for p in cluttered_copy.rglob("*"))
    done = _install(cluttered_copy, cluttered_copy.parent)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stderr)["error"]["code"] == "USAGE"
    assert sorted(p.relative_to(cluttered_copy) for p in cluttered_copy.rglob("*")) == before
    assert sorted(p.name for p in cluttered_copy.parent.iterdir()) == ["bitrix24-agent"]


def test_a_reinstall_keeps_aside_an_earlier_copy_that_holds_files_the_new_one_has_not(
    tmp_path: Path,
) -> None:
    """An operator's env file kept in the installed copy, or an older seed pack of the same
    name, used to be deleted with the earlier copy. Now that copy is kept beside, hidden, and
    the answer says where and what only it held; caches alone keep nothing aside."""
    skills = tmp_path / "skills"
    installed = skills / "bitrix24-agent"
    assert _install(SKILL, skills).returncode == 0
    (installed / "portal.env").write_text(LEFT_BEHIND)
    (installed / "notes").mkdir()
    (installed / "notes" / "mine.txt").write_text("hi\n")
    cache = installed / "scripts" / "b24agent" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "client.cpython-311.pyc").write_bytes(b"cache")
    done = _install(SKILL, skills)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["only_in_earlier_copy"] == ["notes", "portal.env"]
    kept = Path(answer["earlier_copy_kept_at"])
    assert kept.parent == skills and kept.name.startswith(".bitrix24-agent.previous-")
    assert (kept / "portal.env").read_text() == LEFT_BEHIND
    assert (kept / "notes" / "mine.txt").read_text() == "hi\n"
    assert _tracked(installed) == _tracked(SKILL)
    (cache.parent.parent / "__pycache__").mkdir(exist_ok=True)
    (cache.parent.parent / "__pycache__" / "x.pyc").write_bytes(b"cache")
    again = _install(SKILL, skills)
    assert again.returncode == 0, again.stderr
    assert "earlier_copy_kept_at" not in json.loads(again.stdout)
    assert sorted(p.name for p in skills.iterdir()) == [kept.name, "bitrix24-agent"]


def _can_trace() -> bool:
    """strace is installed and may trace here (a container may forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], check=False).returncode == 0


@pytest.mark.skipif(not _can_trace(), reason="needs strace and ptrace")
@pytest.mark.parametrize("failing", [1, 2])
def test_a_reinstall_that_fails_midway_leaves_a_whole_copy_installed(
    failing: int, tmp_path: Path
) -> None:
    """strace makes the Nth rename of the reinstall fail (EIO). Before, the earlier copy was
    renamed away, then the new one in: a failure of the second rename deleted the earlier copy
    with the staging folder, and no skill was installed. Now the two are swapped in one step
    (renameat2 RENAME_EXCHANGE): whatever fails, a whole copy is in place."""
    skills = tmp_path / "skills"
    assert _install(SKILL, skills).returncode == 0
    renames = "rename,renameat,renameat2"
    inject = (
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        f"-einject={renames}:error=EIO:when={failing}",
    )
    done = _install(SKILL, skills, *inject)
    assert done.returncode in (0, 4) and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 1, done.stderr
    assert _tracked(skills / "bitrix24-agent") == _tracked(SKILL)
    assert sorted(p.name for p in skills.iterdir()) == ["bitrix24-agent"]  # nothing left over
