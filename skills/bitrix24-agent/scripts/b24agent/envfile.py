"""Reading one env file as the operator's settings, and refusing one another user could have set.

An env file names the portal, holds its credentials and sets the operator's ceiling, so a file
another local user can write would hand them all three (their own ``B24_OAUTH_SERVER`` receives
the client secret and refresh token). It is opened without following a symbolic link and read
only when it is a regular file that belongs to this user or to root (who can change this user's
files anyway) and that group and others cannot write. A file that holds a credential must not be
readable by others either, nor by its group unless root owns it: an administrator's
``root:b24 0640`` shares it on purpose, a user's 0644 hands the webhook to every local account.
Each refusal is ENV_FILE_UNSAFE (exit 4) naming the path and why; the file is left as it is.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["CREDENTIAL_VARIABLES", "read_env_file"]

#: Variables whose value lets whoever reads it act on the portal (or reach the shared state).
CREDENTIAL_VARIABLES = (
    "B24_WEBHOOK_URL",
    "B24_WEBHOOK_CODE",
    "B24_ACCESS_TOKEN",
    "B24_REFRESH_TOKEN",
    "B24_CLIENT_SECRET",
    "B24_APPLICATION_TOKEN",
    "B24_MCP_TOKEN",
)
#: An env file is a few lines; a larger one is not what the operator meant to name.
MAX_BYTES = 1024 * 1024
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _unsafe(path: Path, why: str, hint: str) -> ConfigError:
    return ConfigError(
        f"env file {path} {why}; refused, nothing was read from it",
        code="ENV_FILE_UNSAFE",
        hint=hint,
    )


def _open(path: Path) -> int:
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(
                path,
                "is a symbolic link (env files are never followed)",
                "name the file itself, not a link to it",
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody writes
            raise _unsafe(path, "is not a regular file", "name a regular file") from None
        raise
    return fd


def _check(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _unsafe(path, "is not a regular file (a FIFO, device or folder)", "name a file")
    if info.st_uid not in (os.geteuid(), 0):
        raise _unsafe(
            path,
            f"belongs to another user (uid {info.st_uid}), who could set this run's settings",
            "use an env file of your own (or root's); find out who put this one there",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise _unsafe(
            path,
            f"is writable by group or others (mode {mode:04o}), who could set this run's settings",
            f"chmod 600 {path}",
        )
    if info.st_size > MAX_BYTES:
        raise _unsafe(path, f"is larger than {MAX_BYTES} bytes", "name the env file itself")


def _exposes(values: dict[str, str | None], info: os.stat_result) -> list[str]:
    """The credentials set in a file that others (or a user's group) may read."""
    readable = info.st_mode & 0o004 or (info.st_mode & 0o040 and info.st_uid != 0)
    if not readable:
        return []
    named = [name for name in CREDENTIAL_VARIABLES if values.get(name)]
    backend = values.get("B24_STATE_BACKEND") or ""
    in_address = "@" in backend.split("//", 1)[-1].split("/", 1)[0]  # redis://:password@host
    if in_address or "password=" in backend.partition("?")[2]:  # redis-py reads ?password= too
        named.append("B24_STATE_BACKEND")
    return named


def read_env_file(path: Path) -> dict[str, str | None]:
    """The variables of ``path`` (python-dotenv syntax), after the checks in the docstring.

    FileNotFoundError when it does not exist; ConfigError when it is unsafe or unreadable.
    """
    fd = _open(path)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)  # the checks hold for what was opened, not for a later swap
        _check(path, info)
        os.set_blocking(fd, True)
        try:
            text = handle.read(MAX_BYTES + 1).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read env file {path}: {type(exc).__name__}", code="CONFIG_INVALID"
            ) from None
    # Imported here: importing settings must stay cheap for commands that never read a file.
    from dotenv import dotenv_values

    values = dict(dotenv_values(stream=io.StringIO(text)))
    exposed = _exposes(values, info)
    if exposed:
        raise _unsafe(
            path,
            f"holds {', '.join(exposed)} and is readable by "
            f"{'others' if info.st_mode & 0o004 else 'its group'} "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            f"chmod 600 {path}, and replace the secret if others may have read it",
        )
    return values
