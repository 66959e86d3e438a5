"""``b24 --install-skill DIR``: put the skill folder into an agent runtime's skills folder.

The skill folder is what runtimes load: SKILL.md, references/, agents/ and scripts/ with this
package inside. Run from a checkout or a copied skill folder, that folder is copied as it is.
Installed from a wheel, it is put back together from the wheel's data files
(``share/bitrix24-agent/skill/``, see pyproject.toml) and this package. Either way the result
works alone, like a copied folder.

Only what a skill folder is made of is copied (``_copied``): SKILL.md, agents/*.yaml,
references/*.md, scripts/*.py and *.txt, and the package's .py and .json files. An env file, a
token store or a state folder someone left in the skill folder (the MCP server reads one from
there with ``--env-file``) stays behind: runtimes show their skills folder to the model.

An earlier copy at ``DIR/bitrix24-agent`` is swapped with the new one, once complete, in one
step (renameat2 RENAME_EXCHANGE), so no moment leaves no skill installed and a failure leaves
the earlier copy in place; anything else there (a link to a checkout, another skill) is left
alone and refused. Settings and state live outside the skill folder, so a reinstall keeps them.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import ConfigError, UsageError

__all__ = ["SKILL_NAME", "install_skill"]

SKILL_NAME = "bitrix24-agent"
#: Where the wheel's data files put the skill folder, relative to the installation prefix.
DATA_PREFIX = "share/bitrix24-agent/skill/"
PACKAGE = Path(__file__).resolve().parents[1]
#: The skill folder's own folders and the kinds of file copied from each; the package
#: (scripts/b24agent) is its .py and .json files, in any subfolder.
FILE_KINDS = {"agents": (".yaml",), "references": (".md",), "scripts": (".py", ".txt")}
PACKAGE_KINDS = (".py", ".json")
#: renameat2(2): its "current directory" descriptor, and the flag that swaps two paths.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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
        _put_in_place(staging / SKILL_NAME, target)
    except OSError as exc:
        raise ConfigError(
            f"cannot install into {root}: {exc.strerror or exc}",
            code="INSTALL_FAILED",
            hint="an earlier copy there is left as it was; fix the folder and run it again",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # with the earlier copy, once swapped out
    return {"installed": str(target), "version": __version__}


def _put_in_place(new: Path, target: Path) -> None:
    """``new`` at ``target``: one rename, or, over an earlier copy, one exchange of the two.
    Where the system cannot exchange (not Linux, an old kernel, some filesystems) it takes two
    renames, and puts the earlier copy back when the second fails; a kill between those two
    leaves it in the staging folder (``.bitrix24-agent-*/``) next to ``target``."""
    if not target.exists():
        new.rename(target)
    elif not _exchange(new, target):
        previous = new.with_name("previous")
        target.rename(previous)
        try:
            new.rename(target)
        except OSError:
            previous.rename(target)
            raise


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE; the standard library has no
    call for it); False where that is not available, OSError when it fails otherwise.

    ctypes is imported here, not with the module: a Python built without libffi has none, and
    the warm server imports this module with every other."""
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (ImportError, OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    paths = os.fsencode(first), os.fsencode(second)
    if renameat2(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], _RENAME_EXCHANGE) == 0:
        return True
    failure = ctypes.get_errno()
    if failure in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(failure, os.strerror(failure), str(second))


def _copied(relative: PurePosixPath, is_dir: bool) -> bool:
    """Whether the skill folder's entry at ``relative`` is part of a skill (see the module)."""
    parts = relative.parts
    if any(
        p.startswith(".") or p == "__pycache__" or p.endswith((".env", ".egg-info")) for p in parts
    ):
        return False  # hidden entries (.env, .env.local, state), caches, build leftovers
    if len(parts) == 1:
        return parts[0] in FILE_KINDS if is_dir else parts[0] == "SKILL.md"
    if parts[:2] == ("scripts", PACKAGE.name):
        return is_dir or relative.suffix in PACKAGE_KINDS
    if is_dir:
        return parts[0] == "references"
    return relative.suffix in FILE_KINDS.get(parts[0], ())


def _only_copied(source: Path, prefix: PurePosixPath) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree`` ignore for the tree at ``source``, which sits at ``prefix`` of a skill."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        where = prefix / Path(folder).relative_to(source).as_posix()
        return {
            name
            for name in names
            if not _copied(where / name, os.path.isdir(os.path.join(folder, name)))
        }

    return ignore


def _assemble(destination: Path) -> None:
    folder = PACKAGE.parent.parent  # scripts/b24agent -> the skill folder, in a checkout
    if (folder / "SKILL.md").is_file() and folder.name == SKILL_NAME:
        shutil.copytree(folder, destination, ignore=_only_copied(folder, PurePosixPath()))
        return
    files = _wheel_files()
    for relative, source in files.items():
        if _copied(PurePosixPath(relative), is_dir=False):
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)
    package = PurePosixPath("scripts", PACKAGE.name)
    shutil.copytree(PACKAGE, destination / package, ignore=_only_copied(PACKAGE, package))


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
