"""``b24 --install-skill DIR``: put the skill folder into an agent runtime's skills folder.

The skill folder is what runtimes load: SKILL.md, references/, agents/ and scripts/ with this
package inside. Run from a checkout or a copied skill folder, that folder is copied as it is.
Installed from a wheel, it is put back together from the wheel's data files
(``share/bitrix24-agent/skill/``, see pyproject.toml) and this package. Either way the result
works alone, like a copied folder.

An earlier copy at ``DIR/bitrix24-agent`` is replaced by a rename once the new one is complete;
anything else there (a link to a checkout, another skill) is left alone and refused. Settings
and state live outside the skill folder, so a reinstall keeps them.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, UsageError

__all__ = ["SKILL_NAME", "install_skill"]

SKILL_NAME = "bitrix24-agent"
#: Where the wheel's data files put the skill folder, relative to the installation prefix.
DATA_PREFIX = "share/bitrix24-agent/skill/"
#: Never copied: caches, build leftovers, and secrets someone left in a checkout's skill folder.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".env")
PACKAGE = Path(__file__).resolve().parents[1]


def install_skill(skills_dir: str) -> dict[str, str]:
    """Copy the skill folder to ``skills_dir/bitrix24-agent``; returns what was installed."""
    root = Path(skills_dir).expanduser()
    target = root / SKILL_NAME
    if target.is_symlink() or (target.exists() and not (target / "SKILL.md").is_file()):
        raise UsageError(
            f"{target} exists and is not a copy of this skill",
            code="USAGE",
            hint="move it away or pick another skills folder; a link is never replaced",
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SKILL_NAME}-", dir=root))
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {root}: {exc.strerror or exc}", code="INSTALL_FAILED"
        ) from None
    try:
        _assemble(staging / SKILL_NAME)
        if target.exists():
            target.rename(staging / "previous")
        (staging / SKILL_NAME).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"installed": str(target), "version": __version__}


def _assemble(destination: Path) -> None:
    folder = PACKAGE.parent.parent  # scripts/b24agent -> the skill folder, in a checkout
    if (folder / "SKILL.md").is_file() and folder.name == SKILL_NAME:
        shutil.copytree(folder, destination, ignore=IGNORED)
        return
    files = _wheel_files()
    for relative, source in files.items():
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / relative)
    shutil.copytree(PACKAGE, destination / "scripts" / PACKAGE.name, ignore=IGNORED)


def _wheel_files() -> dict[str, Path]:
    """The skill folder's files as the installed distribution recorded them."""
    try:
        distribution = metadata.distribution(SKILL_NAME)
    except metadata.PackageNotFoundError:
        distribution = None
    found = {
        str(item).split(DATA_PREFIX, 1)[1]: Path(str(distribution.locate_file(item)))
        for item in (distribution.files or [] if distribution else [])
        if DATA_PREFIX in str(item).replace("\\", "/")
    }
    if "SKILL.md" not in found:
        raise ConfigError(
            "this installation carries no skill folder",
            code="INSTALL_FAILED",
            hint="install bitrix24-agent from its wheel, or copy skills/bitrix24-agent from a "
            "checkout",
        )
    return found
