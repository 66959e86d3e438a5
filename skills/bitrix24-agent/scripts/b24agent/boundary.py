"""The local boundary of state: which folders and files this project may read and write.

A state folder must belong to this user and be closed to group and others for writing, else
another user could plant or swap files in it. The folders above it are checked the way
OpenSSH's StrictModes checks a home folder: each must belong to this user or root and be closed
to group and others for writing, unless it is sticky (``/tmp``: others may add entries there but
never rename or remove ours). Otherwise another user could rename the state folder's parent
away and put a folder of their own in its place. Both the path as given and the path its links
resolve to are checked, so a link in a safe folder that points into an unsafe one is refused,
and so is a link on the way that another user owns (one they left in ``/tmp``): they could
point it at another folder of ours at any time.

A state file is opened without following a symbolic link and only when it is a regular file: a
planted link to a key or to another file, or a FIFO that would block, is refused. Every refusal
is STATE_UNSAFE (exit 4) with the offending path, and what it names is left as it is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_folder", "check_state_file", "make_folder", "open_state_file"]

#: How every state file is opened: never through a symbolic link, never waiting on a FIFO.
_SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_GROUP_OR_OTHER_WRITE = 0o022

#: Folders whose ancestors passed in this process. Only their owner (this user or root, which
#: the check admitted) can make them unsafe later, so another local user cannot invalidate a
#: verdict; the state folder itself is still checked at every open.
_SAFE_ABOVE: set[str] = set()


def _unsafe(path: Path | str, what: str) -> ConfigError:
    return ConfigError(
        f"{path} {what}; refused, and nothing was read from or written to it",
        code="STATE_UNSAFE",
        hint="remove it or fix its owner and mode (state folders: this user's, not writable by "
        "group or others; the folders above them: this user's or root's, not writable by group "
        "or others unless sticky like /tmp), and find out who changed it",
    )


def check_folder(folder: Path) -> None:
    """Refuse a state folder this user does not own or that group or others may write to, or
    one below a folder that would let another user replace it (see the module docstring)."""
    _check_above(folder)
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise _unsafe(folder, "is a state folder's path but not a folder")
    if info.st_uid != os.geteuid():
        raise _unsafe(folder, f"is a state folder owned by another user (uid {info.st_uid})")
    if info.st_mode & _GROUP_OR_OTHER_WRITE:
        mode = stat.S_IMODE(info.st_mode)
        raise _unsafe(folder, f"is a state folder writable by group or others (mode {mode:04o})")


def _ancestors(path: str) -> list[str]:
    found = []
    while (parent := os.path.dirname(path)) != path:
        found.append(parent)
        path = parent
    return found


def _check_above(folder: Path) -> None:
    """StrictModes for every existing folder above ``folder``, as given and as resolved."""
    given = os.path.abspath(folder)
    if given in _SAFE_ABOVE:
        return
    resolved = os.path.realpath(given)
    me = os.geteuid()
    complete = True
    for ancestor in dict.fromkeys([*_ancestors(given), *_ancestors(resolved)]):
        try:
            link = os.lstat(ancestor)
            info = os.stat(ancestor)
        except FileNotFoundError:  # make_folder makes it 0700 and checks again, uncached
            complete = False
            continue
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
            raise _unsafe(
                ancestor,
                f"is a link above the state folder {folder} owned by another user "
                f"(uid {link.st_uid}), who could point it elsewhere",
            )
        if info.st_uid not in (me, 0):
            raise _unsafe(
                ancestor,
                f"is a folder above the state folder {folder} owned by another user "
                f"(uid {info.st_uid})",
            )
        if info.st_mode & _GROUP_OR_OTHER_WRITE and not info.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(info.st_mode)
            raise _unsafe(
                ancestor,
                f"is a folder above the state folder {folder} writable by group or others and "
                f"not sticky (mode {mode:04o})",
            )
    if complete:
        _SAFE_ABOVE.add(given)


def make_folder(folder: Path) -> None:
    """Create ``folder`` and every missing folder above it 0700 whatever the umask (a plain
    ``mkdir(parents=True)`` gives the parents the umask's mode), then check it. Nothing is
    made below a folder that fails the check."""
    _check_above(folder)
    missing = []
    at = folder
    while not at.exists():
        missing.append(at)
        at = at.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile: fine if it is a folder
            if not each.is_dir():
                raise
    check_folder(folder)


def check_state_file(path: Path) -> None:
    """Refuse early, before a call is sent, a state file that is a link or not a regular file
    (the open itself refuses it again, so a swap after this check gains nothing)."""
    check_folder(path.parent)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _unsafe(path, "is a symbolic link; state files are never followed")
    if not stat.S_ISREG(info.st_mode):
        raise _unsafe(path, "is not a regular file (a FIFO, device or folder)")


def open_state_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a state file safely (see the module docstring); returns a blocking descriptor."""
    check_folder(path.parent)
    try:
        fd = os.open(path, flags | _SAFE_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path, "is a symbolic link; state files are never followed") from None
        if exc.errno == errno.ENXIO:  # a FIFO that nobody reads
            raise _unsafe(path, "is not a regular file (a FIFO)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unsafe(path, "is not a regular file (a FIFO, device or folder)")
    os.set_blocking(fd, True)
    return fd
