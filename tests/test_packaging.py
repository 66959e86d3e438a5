"""The project as a PyPI user gets it: the wheel carries the skill folder and ``b24
--install-skill`` rebuilds it, complete, from a fresh virtualenv; the sdist carries everything
its own tests need, and they run from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from b24agent import __version__
from conftest import ROOT, Sandbox

pytestmark = pytest.mark.slow

SKILL = ROOT / "skills" / "bitrix24-agent"
#: Never part of a build: environments, caches, local builds, secrets.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache",
    ".hypothesis", ".env",
)  # fmt: skip


def files_of(folder: Path) -> set[str]:
    """Relative paths of a skill folder's files, without caches and build leftovers."""
    skipped = ("__pycache__", ".egg-info")
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.endswith(skipped) for part in path.relative_to(folder).parts)
        and path.suffix != ".pyc"
        and path.name != ".env"
    }


def run(args: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist and wheel built by ``python -m build`` from a clean copy of the project (the wheel
    is built from the sdist, so the sdist must hold what the wheel needs)."""
    base = tmp_path_factory.mktemp("build")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "build", "--outdir", base / "dist", source])
    (sdist,) = (base / "dist").glob("*.tar.gz")
    (wheel,) = (base / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_a_wheel_install_puts_the_complete_skill_folder_into_a_runtime(
    built: dict[str, Path], tmp_path: Path, portal: Sandbox
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", built["wheel"]])
    b24 = env_dir / "bin" / "b24"
    assert run([b24, "--version"]).stdout == f"bitrix24-agent {__version__}\n"

    home = tmp_path / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "B24_SERVER": "off"}
    skills = home / ".agents" / "skills"
    shown = run([b24, "--install-skill", skills, "--compact"], env=env, cwd=tmp_path)
    copy = skills / "bitrix24-agent"
    assert json.loads(shown.stdout) == {"installed": str(copy), "version": __version__}
    assert files_of(copy) == files_of(SKILL)
    for name in ("SKILL.md", "agents/openai.yaml", "scripts/b24agent/catalog/methods.json"):
        assert (copy / name).read_bytes() == (SKILL / name).read_bytes(), name

    again = run([b24, "--install-skill", skills, "--compact"], env=env, cwd=tmp_path)
    assert json.loads(again.stdout)["installed"] == str(copy)  # replaces its own earlier copy
    assert sorted(p.name for p in skills.iterdir()) == ["bitrix24-agent"]  # nothing left over

    client = copy / "scripts" / "bitrix24_client.py"
    call = {**env, "B24_WEBHOOK_URL": portal.webhook_url, "B24_STATE_DIR": str(tmp_path / "st")}
    me = run([python, client, "user.current", "--output", "result"], env=call, cwd=tmp_path)
    assert json.loads(me.stdout)["ID"] == str(portal.webhook["user_id"])


def test_the_sdist_carries_its_tests_and_they_run_from_it(
    built: dict[str, Path], tmp_path: Path
) -> None:
    with tarfile.open(built["sdist"]) as archive:
        archive.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.iterdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked / "skills" / "bitrix24-agent" / "scripts")}
    where = run([sys.executable, "-c", "import b24agent; print(b24agent.__file__)"], env=env,
                cwd=unpacked)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(unpacked)

    def collected(folder: Path) -> set[str]:
        done = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                    "no:cacheprovider"], env=env, cwd=folder)  # fmt: skip
        return {line for line in done.stdout.splitlines() if "::" in line}

    in_sdist = collected(unpacked)
    assert in_sdist and in_sdist == collected(ROOT)
    quick = ["tests/test_settings.py", "tests/test_skill_references.py", "tests/test_scripts.py"]
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not closed",
         *quick], env=env, cwd=unpacked)  # fmt: skip
