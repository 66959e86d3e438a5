"""The skill loads where agents live: the real Codex CLI loader (with agents/openai.yaml), the
Agent Skills validator, and OpenClaw's loading rules for every way a user configures a portal,
each of which then really works with the client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openclaw_support as openclaw
import pytest
import yaml
from b24agent import __version__
from cli_support import Cli
from client_support import oauth_env
from codex_support import list_skills
from conftest import ROOT, Sandbox, write_env

SKILL = ROOT / "skills" / "bitrix24-agent"
FRONTMATTER_BUDGET = 2048
#: The seed's frontmatter, shortened: metadata as one quoted JSON string, the same block under
#: two runtime names, and B24_DOMAIN required although a webhook URL alone is enough.
SEED_BLOCK = {"requires": {"bins": ["python3"], "env": ["B24_DOMAIN"]}}
SEED = (
    "---\nname: bitrix24-agent\ndescription: Read and change a Bitrix24 portal.\n"
    f"metadata: '{json.dumps({'openclaw': SEED_BLOCK, 'clawdbot': SEED_BLOCK})}'\n"
    "---\n# Bitrix24 agent\n"
)


def skill_text() -> str:
    return (SKILL / "SKILL.md").read_text(encoding="utf-8")


def frontmatter_bytes(text: str) -> int:
    """Bytes from the opening ``---`` through the closing ``---`` line."""
    end = text.index("\n---\n", 3) + len("\n---\n")
    return len(text[:end].encode())


def install(tmp_path: Path, skills_root: str, skill_md: str | None = None) -> Path:
    """The skill folder copied alone under ``tmp_path/skills_root`` (a runtime's skills
    folder), optionally with another SKILL.md."""
    target = tmp_path / skills_root / SKILL.name
    shutil.copytree(SKILL, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if skill_md is not None:
        (target / "SKILL.md").write_text(skill_md, encoding="utf-8")
    return target


# --- frontmatter -----------------------------------------------------------------------------


def test_frontmatter_fits_2048_bytes_with_one_runtime_block() -> None:
    text = skill_text()
    assert frontmatter_bytes(text) <= FRONTMATTER_BUDGET
    metadata = json.loads(openclaw.frontmatter(text)["metadata"])
    assert set(metadata) == {"openclaw"}, "one block per runtime, no alias copies"


# --- Codex -------------------------------------------------------------------------------------


def test_codex_loads_the_skill_with_its_openai_yaml(tmp_path: Path) -> None:
    copy = install(tmp_path / "home", ".agents/skills")
    (tmp_path / "work").mkdir()
    entry = list_skills(tmp_path / "home", tmp_path / "work")
    assert [e for e in entry["errors"] if SKILL.name in e["path"]] == []
    (skill,) = [s for s in entry["skills"] if s["name"] == SKILL.name]
    assert Path(skill["path"]).resolve() == (copy / "SKILL.md").resolve()
    assert skill["enabled"] and skill["scope"] == "user"
    assert skill["description"] == yaml.safe_load(skill_text().split("---")[1])["description"]
    openai = yaml.safe_load((SKILL / "agents" / "openai.yaml").read_text(encoding="utf-8"))
    interface = skill["interface"]
    assert interface["displayName"] == openai["interface"]["display_name"]
    assert interface["shortDescription"] == openai["interface"]["short_description"]
    assert interface["defaultPrompt"] == openai["interface"]["default_prompt"]
    tools = [(t["type"], t["value"], t["url"]) for t in skill["dependencies"]["tools"]]
    assert tools == [(t["type"], t["value"], t["url"]) for t in openai["dependencies"]["tools"]]


def test_codex_rejects_the_seeds_json_string_metadata(tmp_path: Path) -> None:
    """The control: the same loader refuses the seed's frontmatter, so the test above can fail."""
    install(tmp_path / "home", ".agents/skills", skill_md=SEED)
    (tmp_path / "work").mkdir()
    entry = list_skills(tmp_path / "home", tmp_path / "work")
    assert SKILL.name not in [s["name"] for s in entry["skills"]]
    (error,) = [e for e in entry["errors"] if SKILL.name in e["path"]]
    assert "expected struct SkillFrontmatterMetadata" in error["message"]


# --- Agent Skills validator (skills-ref) ---------------------------------------------------------


def test_the_agent_skills_validator_accepts_the_copied_folder(tmp_path: Path) -> None:
    pytest.importorskip("skills_ref", reason="skills-ref needs Python 3.11+")
    copy = install(tmp_path, "skills")
    cli = Path(sys.executable).parent / "agentskills"
    done = subprocess.run(
        [str(cli), "validate", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shown = subprocess.run(
        [str(cli), "read-properties", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert json.loads(shown.stdout)["name"] == SKILL.name


# --- OpenClaw ------------------------------------------------------------------------------------


def _webhook_parts(portal: Sandbox, _cli: Cli) -> dict[str, str]:
    return {
        "B24_DOMAIN": portal.url,
        "B24_WEBHOOK_USER_ID": str(portal.webhook["user_id"]),
        "B24_WEBHOOK_CODE": portal.webhook["code"],
    }


def _oauth(portal: Sandbox, cli: Cli) -> dict[str, str]:
    everything = oauth_env(portal, cli.state)
    return {k: v for k, v in everything.items() if k not in ("B24_STATE_DIR", "HOME")}


def _env_file_only(portal: Sandbox, cli: Cli) -> dict[str, str]:
    """Nothing in the environment: the webhook URL sits in the state folder's .env."""
    cli.state.mkdir(parents=True, exist_ok=True)
    write_env(cli.state / ".env", f"B24_WEBHOOK_URL={portal.webhook_url}\n")
    return {}


#: Each working configuration: the B24_* variables the user sets (and any file it writes).
CONFIGURATIONS: dict[str, Callable[[Sandbox, Cli], dict[str, str]]] = {
    "webhook URL only": lambda portal, _cli: {"B24_WEBHOOK_URL": portal.webhook_url},
    "webhook parts": _webhook_parts,
    "OAuth app": _oauth,
    "env file only": _env_file_only,
}


def _host(env: dict[str, str]) -> openclaw.Host:
    """This machine as OpenClaw would see it, with ``env`` as the user's B24_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    return openclaw.Host(env={**base, **env}, path=os.environ.get("PATH", ""))


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_openclaw_loads_the_skill_and_the_client_works_with(
    name: str, portal: Sandbox, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, {})
    env = CONFIGURATIONS[name](portal, cli)
    block = openclaw.manifest(openclaw.frontmatter(skill_text()))
    assert block is not None
    assert openclaw.eligible(block, _host(env)), f"OpenClaw would hide the skill: {name}"
    me = cli.with_env(**env)("user.current", "--output", "result")
    assert me.code == 0, me.err
    assert me.json()["ID"]


def test_openclaw_rules_hide_the_seed_from_a_user_with_only_a_webhook_url() -> None:
    """The control: the re-implemented rules do filter, so the test above can fail."""
    block = openclaw.manifest(openclaw.frontmatter(SEED))
    assert block is not None and openclaw.requires(block)["env"] == ["B24_DOMAIN"]
    assert not openclaw.eligible(block, _host({"B24_WEBHOOK_URL": "https://x/rest/1/c/"}))
    assert not openclaw.eligible(block, _host({}))
    assert openclaw.eligible(block, _host({"B24_DOMAIN": "x.bitrix24.com"}))


def test_openclaw_offers_one_install_that_puts_b24_on_path() -> None:
    block = openclaw.manifest(openclaw.frontmatter(skill_text()))
    assert block is not None
    (entry,) = openclaw.installs(block)
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert entry["kind"] == "uv"
    assert entry["package"] == f"{project['name']}=={__version__}"
    assert entry["bins"] == ["b24"] and "b24" in project["scripts"]
