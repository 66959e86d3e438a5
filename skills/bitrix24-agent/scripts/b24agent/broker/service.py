"""``b24-broker serve``: the long-running process, its sockets, and a forked worker per connection.

Start-up, before any connection is taken: the operator's env file becomes every call's
``B24_ENV_FILE`` (real variables win, as for ``b24``); the settings must load with credentials
(a broken configuration stops here, exit 4, not at the first call); the state folder must be
private (owned by this user, no group or other access), because it holds the token store, the
plan key, the audit key and the audit log; the audit key is made once (``B24_AUDIT_KEY_FILE``,
default ``audit.key`` in the state folder); and the process moves into the state folder.

Two sockets, mode 0660: the call socket (group ``--group``: the agents) and the admin socket
(group ``--approvers``: the people who approve). The parent only accepts and forks; each child
serves one connection and exits, so nothing of one call (settings, tokens, environment) reaches
the next. SIGTERM or SIGINT: the sockets are removed and calls already running finish.
"""

from __future__ import annotations

import contextlib
import grp
import os
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from ..cli.warm.server import warm_up
from ..errors import ConfigError
from ..guard.auditchain import create_key
from ..settings import load_settings
from .admin import serve_admin
from .calls import serve_brokered_call

__all__ = ["Sockets", "serve"]

#: How often the parent reaps finished workers when no connection comes (seconds).
REAP_EVERY_S = 1.0


class Sockets:
    """Where the broker listens and which group may connect to each socket."""

    def __init__(
        self, calls: str, admin: str | None, group: str | None, approvers: str | None
    ) -> None:
        self.calls = calls
        self.admin = admin or str(Path(calls).with_name("admin.sock"))
        self.group = group
        self.approvers = approvers


def serve(sockets: Sockets, env_file: str | None) -> int:
    """Run the broker until SIGTERM/SIGINT; returns the exit code."""
    os.umask(0o077)
    if env_file is not None:  # every call reads it, as B24_ENV_FILE (real variables still win)
        os.environ["B24_ENV_FILE"] = str(Path(env_file).resolve())
    settings = load_settings()
    state_root = settings.state_dir.parent
    _private_folder(state_root)
    key_file = settings.audit_key_file or state_root / "audit.key"
    os.environ["B24_AUDIT_KEY_FILE"] = str(key_file)
    create_key(key_file)
    os.chdir(state_root)
    warm_up()
    listeners = {
        _listen(sockets.calls, sockets.group): serve_brokered_call,
        _listen(sockets.admin, sockets.approvers): serve_admin,
    }
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        while not stopping:
            _accept_one(listeners)
            _reap()
    finally:
        for path in (sockets.calls, sockets.admin):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return 0


def _private_folder(folder: Path) -> None:
    """Make ``folder`` (0700) or check that it is ours and closed to everyone else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not folder.is_dir():
        raise ConfigError(
            f"the broker's state folder {folder} must be a folder of this user with no group or "
            f"other access (mode {info.st_mode & 0o777:o})",
            code="STATE_NOT_PRIVATE",
            hint=f"chmod 700 {folder} (B24_STATE_DIR), or point B24_STATE_DIR at a new folder",
        )


def _listen(path: str, group: str | None) -> socket.socket:
    """Bind ``path`` (0660, group ``group``), replacing a stale socket file."""
    with contextlib.suppress(FileNotFoundError):
        if Path(path).is_socket():
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                f"no group {group!r} for the socket {path}",
                code="CONFIG_INVALID",
                hint="create the group (groupadd) or name an existing one",
            ) from None
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _accept_one(listeners: dict[socket.socket, Callable[[socket.socket], None]]) -> None:
    """Wait for a connection; hand it to a forked child that serves it and exits."""
    try:
        ready, _, _ = select.select(list(listeners), [], [], REAP_EVERY_S)
    except InterruptedError:
        return
    for listener in ready:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        if os.fork() == 0:
            code = 0
            try:
                for other in listeners:
                    other.close()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                conn.setblocking(True)
                listeners[listener](conn)
            except BaseException:
                code = 1
            os._exit(code)
        conn.close()


def _reap() -> None:
    """Collect finished workers."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
