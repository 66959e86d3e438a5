"""``b24-broker serve``: the long-running process, its sockets, and a forked worker per connection.

Start-up, before any connection is taken: the operator's env file becomes every call's
``B24_ENV_FILE`` (real variables win, as for ``b24``); the settings must load with credentials
(a broken configuration stops here, exit 4, not at the first call); the state folder must be
private (owned by this user, no group or other access), because it holds the token store, the
plan key, the audit key and the audit log; the audit and plan keys are made once
(``B24_AUDIT_KEY_FILE`` and ``B24_PLAN_KEY_FILE``, default ``audit.key`` and ``plan.key`` in the
state folder: never in a shared store, where callers could read them); a Redis store must need a
password; and the process moves into the state folder.

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
from ..guard.drain import is_drainer
from ..guard.keyfile import create_key
from ..settings import load_settings
from .admin import serve_admin
from .calls import peer, serve_brokered_call

__all__ = ["Sockets", "serve"]

#: How often the parent reaps finished workers when no connection comes (seconds).
REAP_EVERY_S = 1.0
#: Calls served at once. Above it new callers wait in the socket's backlog until one ends, so
#: a caller opening connections by the thousand cannot exhaust the operator's processes.
MAX_CALLS = 64
#: Calls of one user (the kernel's uid) served at once. A call may rightly last long (a stdin
#: the caller keeps open, a plan waiting for approval), so without a share per user one agent
#: holding its calls open would take every slot from the other users; half stays theirs.
MAX_CALLS_PER_USER = MAX_CALLS // 2
#: Slots only the drain workers (B24_BROKER_DRAINERS, as the broker's settings named them at
#: start) may take: all other users together hold at most MAX_CALLS - RESERVED_CALLS, so even
#: several agents holding their calls open leave the drain its share. The operator needs none:
#: the admin socket's connections are not counted. A connection past a share is closed
#: unserved: the caller hears that nothing was sent (exit 6).
RESERVED_CALLS = MAX_CALLS // 4
#: Forked workers serving call connections: whose call each serves (uid), and whether that
#: user is a drain worker (the admin socket's are not counted: only the approvers reach it).
_call_workers: dict[int, tuple[int, bool]] = {}


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
    for variable, key_file in (
        ("B24_AUDIT_KEY_FILE", settings.audit_key_file or state_root / "audit.key"),
        ("B24_PLAN_KEY_FILE", settings.plan_key_file or state_root / "plan.key"),
    ):
        os.environ[variable] = str(key_file)
        create_key(key_file)
    os.chdir(state_root)
    warm_up()
    calls = _listen(sockets.calls, sockets.group)
    listeners = {calls: serve_brokered_call, _listen(sockets.admin, sockets.approvers): serve_admin}
    drainers = settings.broker_drainers
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        while not stopping:
            _accept_one(listeners, calls, drainers)
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


def _accept_one(
    listeners: dict[socket.socket, Callable[[socket.socket], None]],
    calls: socket.socket,
    drainers: tuple[str, ...],
) -> None:
    """Wait for a connection; hand it to a forked child that serves it and exits. The call
    socket is not watched while MAX_CALLS workers are busy, and a caller past its share
    (``_past_share``) is not served."""
    watched = [one for one in listeners if one is not calls or len(_call_workers) < MAX_CALLS]
    try:
        ready, _, _ = select.select(watched, [], [], REAP_EVERY_S)
    except InterruptedError:
        return
    for listener in ready:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        caller = None
        if listener is calls:
            who = peer(conn)
            caller = who["uid"], is_drainer(who, drainers)
            if _past_share(*caller):
                conn.close()
                continue
        pid = os.fork()
        if pid == 0:
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
        if caller is not None:
            _call_workers[pid] = caller
        conn.close()


def _past_share(uid: int, drainer: bool) -> bool:
    """Whether a call of ``uid`` would take more than its user's share, or (not a drain
    worker's) one of the slots kept for the drain."""
    served = list(_call_workers.values())
    if sum(user == uid for user, _ in served) >= MAX_CALLS_PER_USER:
        return True
    others = sum(not kept for _, kept in served)
    return not drainer and others >= MAX_CALLS - RESERVED_CALLS


def _reap() -> None:
    """Collect finished workers."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _call_workers.pop(pid, None)
