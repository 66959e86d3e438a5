"""The warm server behind ``b24``: everything imported once, a forked worker per call.

Why: a cold ``b24`` spends 250 ms importing before its first request, 30x a ``curl``. This
process imports the CLI's whole stack, rehearses a call, and keeps ``SPARES`` forked workers
waiting for connections; each has rehearsed again in its own memory. A call then costs a connect
and its own work (``worker.py``). Each worker serves exactly one call and exits, so nothing
(settings, tokens, limiter, environment) carries over from one call to the next.

A taken spare is replaced once its call is over, not while it runs: the replacement's fork and
rehearsal (a whole call of CPU, three fsyncs) made the call they overlapped 20-40% slower on a
busy two-core machine. Only when calls run side by side and no spare is left does the next one
start at once, so a burst never waits for a call to end.

Only the caller's own user can reach the socket (a 0700 folder; workers check SO_PEERCRED),
and a worker serves only a caller confined as the server is (``confinement.py``).
The parent only forks: a new spare for each one taken. After ``B24_SERVER_IDLE_SEC`` (default
300) without a call it removes the socket and tells the spares to leave; a connection that was
still queued then sees the socket close before any worker took it, and its caller runs the call
itself. Started by ``b24`` (``launch.py``), detached, with no B24_* values in its environment.

It binds the socket first, under the lock, and warms up after: callers that come meanwhile
queue on it (a worker takes them once it is forked) rather than start servers of their own.
A warm-up that fails removes the socket again, so callers run cold instead of being refused;
the ``.starting`` stamp launch.py made stays, and no caller starts another server until it is
RESTART_AFTER_S old (each doomed start imports the whole stack).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pkgutil
import select
import socket
import sys
import time

from filelock import FileLock

from . import rehearsal, wire
from .worker import SignalRelay, own_confinement, serve_call

__all__ = ["main", "warm_up"]

DEFAULT_IDLE_S = 300.0
#: Workers kept waiting: one can rehearse while the other takes the next call.
SPARES = 2
#: How often the parent checks on its spares and the idle deadline (seconds).
CHECK_EVERY_S = 1.0
#: The modules no ``b24`` call runs (wire.NOT_SERVED): never imported here.
NOT_FOR_CALLS = tuple(f"b24agent.{name}" for name in wire.NOT_SERVED)


def main(argv: list[str] | None = None) -> int:
    """``server.py SOCKET``: serve until idle."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: server.py SOCKET (started by b24; see B24_SERVER)", file=sys.stderr)
        return 2
    try:
        idle_s = float(os.environ.get("B24_SERVER_IDLE_SEC", DEFAULT_IDLE_S))
    except ValueError:
        idle_s = DEFAULT_IDLE_S
    listener = _listen(args[0])
    if listener is None:
        _started(args[0])
        return 0  # another server answers on this socket
    try:
        warm_up()
        own_confinement()  # read once here, so that no worker reads it on a call
    except BaseException:
        # Left bound, the socket would refuse every caller (ECONNREFUSED), and each would
        # start another server doomed the same way; launch.py's stamp spaces those out.
        _unlisten(args[0], listener)
        raise
    _started(args[0])
    _Server(args[0], listener, idle_s).run()
    return 0


def _started(address: str) -> None:
    """A server answers on ``address``: the next one that finds none may start another at once
    (launch.py waits wire.RESTART_AFTER_S after a start that never got this far)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address + wire.STARTING)


def _unlisten(address: str, listener: socket.socket) -> None:
    """Remove the socket this server bound, then close it. While it is open no other server
    replaces the file (they find it answering), so the file unlinked is this server's."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    listener.close()


def _listen(address: str) -> socket.socket | None:
    """Bind ``address`` unless a live server holds it; a stale socket file is replaced."""
    with FileLock(address + ".lock", mode=0o600):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
            return None
        except OSError:
            pass
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file itself: this user only
        try:
            listener.bind(address)
        finally:
            os.umask(old_umask)
        listener.listen(64)
        listener.setblocking(False)
        return listener


def warm_up() -> None:
    """Import every module a call may need and rehearse one, so workers do none of it; then
    keep those objects out of the GC, whose passes would copy their pages into each worker."""
    import netrc  # noqa: F401 - requests imports it on each request, to look for credentials

    import b24agent

    _import_tree(b24agent.__path__, "b24agent.")
    rehearsal.sweep()  # what rehearsals of processes killed before left behind
    _rehearse()
    gc.collect()
    gc.freeze()


def _import_tree(path: list[str], prefix: str) -> None:
    """Import every module below ``path`` except those in NOT_FOR_CALLS (not even packages'
    ``__init__``, which ``pkgutil.walk_packages`` would import to look inside); one whose
    import fails for want of a module is left out, with what is below it."""
    for module in pkgutil.iter_modules(path, prefix):
        if module.name.startswith(NOT_FOR_CALLS):
            continue
        try:
            imported = importlib.import_module(module.name)
        except ImportError as exc:
            # Something it needs is missing (a package, or ``_ctypes`` in a Python built
            # without libffi): serve the rest warm. A call that needs this module imports it
            # from disk and fails as it would in-process (DEPENDENCY_MISSING, exit 4).
            print(f"b24 server: {module.name} not preloaded: {exc}", file=sys.stderr)
            continue
        if module.ispkg:
            _import_tree(imported.__path__, module.name + ".")


def _rehearse() -> None:
    """Best effort: a rehearsal that fails (say, no loopback port) only makes calls slower."""
    with contextlib.suppress(Exception):
        rehearsal.rehearse()


class _Server:
    """The parent: keeps SPARES workers waiting and leaves when idle."""

    def __init__(self, address: str, listener: socket.socket, idle_s: float) -> None:
        self.address = address
        self.listener = listener
        self.idle_s = idle_s
        self.notices, self.notify = os.pipe()
        os.set_blocking(self.notices, False)
        self.stop_read, self.stop_write = os.pipe()
        self.spares: set[int] = set()
        #: Workers serving a call; each one's spare is forked when it is done.
        self.busy: set[int] = set()

    def run(self) -> None:
        deadline = time.monotonic() + self.idle_s
        try:
            self._refill()
            while time.monotonic() < deadline:
                select.select([self.notices], [], [], CHECK_EVERY_S)
                gone = _reap()
                # Drained after reaping: a worker writes its notice before it can exit, so
                # every reaped worker that took a call is discarded from the spares here.
                for kind, pid in self._notices():
                    if kind == wire.TAKEN:
                        self.spares.discard(pid)
                        self.busy.add(pid)
                        deadline = time.monotonic() + self.idle_s
                    else:
                        self.busy.discard(pid)
                if self.spares & gone:
                    break  # a spare died without a call: a bug; clients fall back and restart us
                self.busy -= gone  # killed before it could say it was done
                self._refill()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
            self.listener.close()
            os.close(self.stop_write)  # every spare still waiting sees this and leaves

    def _refill(self) -> None:
        """SPARES waiting workers, less one per call still running, but never none."""
        while len(self.spares) < max(1, SPARES - len(self.busy)):
            self._fork_spare()

    def _notices(self) -> list[tuple[bytes, int]]:
        """(TAKEN or DONE, pid) of each notice from the workers since the last look."""
        try:
            notices = os.read(self.notices, 4096)
        except BlockingIOError:
            return []
        return [
            (notices[i : i + 1], int.from_bytes(notices[i + 1 : i + 5], "big"))
            for i in range(0, len(notices), 5)
        ]

    def _fork_spare(self) -> None:
        pid = os.fork()
        if pid:
            self.spares.add(pid)
            return
        code = 0
        try:
            os.close(self.notices)
            os.close(self.stop_write)
            # Rehearse again in this process: its first call would otherwise spend 4 ms
            # copying the parent's memory pages it writes to (reference counts), the state
            # files' validation among them (0.5 ms when only the parent had run it).
            _rehearse()
            relay = SignalRelay()
            conn = self._accept()
            if conn is not None:
                pid = os.getpid().to_bytes(4, "big")
                os.write(self.notify, wire.TAKEN + pid)
                os.close(self.stop_read)
                self.listener.close()
                conn.setblocking(True)
                try:
                    serve_call(conn, relay)
                finally:
                    # The call is over (or never started): the parent may fork this worker's
                    # successor. If this is cut short, the parent finds the worker reaped.
                    with contextlib.suppress(OSError):
                        os.write(self.notify, wire.DONE + pid)
        except BaseException:
            code = 1
        os._exit(code)

    def _accept(self) -> socket.socket | None:
        """The next connection, or None once the parent says stop (or is gone)."""
        while True:
            ready, _, _ = select.select([self.listener, self.stop_read], [], [])
            if self.stop_read in ready:
                return None
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                continue  # the other spare took it
            return conn


def _reap() -> set[int]:
    """Collect finished children; their pids. A child killed while it rehearsed left its
    throwaway folder: it is removed while the dead child still holds its pid (not yet reaped),
    so no process that took the pid since can lose its folder."""
    gone = set()
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return gone
        if found is None:
            return gone
        rehearsal.sweep(found.si_pid)
        os.waitpid(found.si_pid, 0)
        gone.add(found.si_pid)
