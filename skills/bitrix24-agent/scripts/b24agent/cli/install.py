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
alone and refused, and so is the folder this runs from. Settings and state live outside the
skill folder, so a reinstall keeps them. The earlier copy is deleted only when the new one holds
everything it held (caches aside); otherwise (an env file someone kept there, an older seed pack
of the same name) it is kept beside, hidden, and the answer says where and what only it holds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
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
#: How many of the earlier copy's own entries the answer names.
NAMES_SHOWN = 20
#: renameat2(2): its "current directory" descriptor, and the flag that swaps two paths.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def install_skill(skills_dir: str) -> dict[str, object]:
    """Copy the skill folder to ``skills_dir/bitrix24-agent``; returns what was installed, and
    where the earlier copy was kept when it held files the new copy has not."""
    root = Path(skills_dir).expanduser()
    target = root / SKILL_NAME
    if target.is_symlink() or (target.exists() and not (target / "SKILL.md").is_file()):
        raise UsageError(
            f"{target} exists and is not a copy of this skill",
            code="USAGE",
            hint="move it away or pick another skills folder; a link is never replaced",
        )
    source = _skill_folder()
    if source is not None and target.exists() and os.path.samefile(source, target):
        raise UsageError(
            f"{target} is the skill folder this runs from",
            code="USAGE",
            hint="pick another skills folder; the folder itself is already a whole skill",
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SKILL_NAME}-", dir=root))
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {root}: {exc.strerror or exc}", code="INSTALL_FAILED"
        ) from None
    installed: dict[str, object] = {"installed": str(target), "version": __version__}
    kept = None
    try:
        _assemble(staging / SKILL_NAME, source)
        lost = _only_in(target, staging / SKILL_NAME) if target.exists() else []
        earlier = _put_in_place(staging / SKILL_NAME, target)
        if earlier is not None and lost:
            kept = _keep_aside(earlier, root)
            shown = lost[:NAMES_SHOWN] + [f"... {len(lost) - NAMES_SHOWN} more"] * (
                len(lost) > NAMES_SHOWN
            )
            installed.update(earlier_copy_kept_at=str(kept), only_in_earlier_copy=shown)
    except OSError as exc:
        raise ConfigError(
            f"cannot install into {root}: {exc.strerror or exc}",
            code="INSTALL_FAILED",
            hint="an earlier copy there is left as it was; fix the folder and run it again",
        ) from None
    finally:
        if kept is None or not kept.is_relative_to(staging):
            shutil.rmtree(staging, ignore_errors=True)  # with the earlier copy, once swapped out
    return installed


def _only_in(earlier: Path, new: Path) -> list[str]:
    """What the earlier copy holds that the new one has not (an operator's env file, notes, a
    module an older version had), caches aside: deleted with the earlier copy, it would be gone.
    A folder it cannot read is an OSError, not a folder found empty."""
    found = []
    for folder, folders, files in os.walk(earlier, onerror=_raise):
        here = Path(folder).relative_to(earlier)
        for name in [*folders, *files]:
            if name != "__pycache__" and _kind(new / here / name) != _kind(earlier / here / name):
                found.append((here / name).as_posix())
        folders[:] = [f for f in folders if f != "__pycache__" and _kind(new / here / f) == "dir"]
    return sorted(found)


def _kind(path: Path) -> str | None:
    """What ``path`` itself is (a link is a file here, whatever it points to); None: absent."""
    try:
        return "dir" if stat.S_ISDIR(path.lstat().st_mode) else "file"
    except FileNotFoundError:
        return None


def _raise(error: OSError) -> None:
    raise error


def _keep_aside(earlier: Path, root: Path) -> Path:
    """The earlier copy moved to ``root/.bitrix24-agent.previous-<time>-<random>`` (hidden, and
    not named as the skill); where it is now (the staging folder, kept) if that move fails. It
    never raises: the new copy is in place by now, and the earlier one must not be deleted."""
    try:
        kept = Path(
            tempfile.mkdtemp(
                prefix=f".{SKILL_NAME}.previous-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root
            )
        )
    except OSError:
        return earlier
    try:
        earlier.rename(kept)  # onto the empty folder just made: one step, never over another
    except OSError:
        with contextlib.suppress(OSError):
            kept.rmdir()
        return earlier
    return kept


def _put_in_place(new: Path, target: Path) -> Path | None:
    """``new`` at ``target``: one rename, or, over an earlier copy, one exchange of the two;
    returns where the earlier copy is then (in the staging folder), if there was one.
    Where the system cannot exchange (not Linux, an old kernel, some filesystems) it takes two
    renames, and puts the earlier copy back when the second fails; a kill between those two
    leaves it in the staging folder (``.bitrix24-agent-*/``) next to ``target``."""
    if not target.exists():
        new.rename(target)
        return None
    if _exchange(new, target):
        return new
    previous = new.with_name("previous")
    target.rename(previous)
    try:
        new.rename(target)
    except OSError:
        previous.rename(target)
        raise
    return previous


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


def _skill_folder() -> Path | None:
    """The skill folder this package runs from (a checkout or a copied skill folder), or None
    when it runs from a wheel."""
    folder = PACKAGE.parent.parent  # scripts/b24agent -> the skill folder
    return folder if (folder / "SKILL.md").is_file() and folder.name == SKILL_NAME else None


def _assemble(destination: Path, folder: Path | None) -> None:
    """The skill at ``destination``: copied from ``folder``, or from the wheel's files."""
    if folder is not None:
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
