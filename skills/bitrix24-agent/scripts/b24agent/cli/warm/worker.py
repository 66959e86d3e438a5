"""One call inside a warm-server worker: take over the caller's process state, run, report.

The worker was forked from the warm server and has accepted one connection. It becomes the
process the caller would have been: the caller's argv, environment, folder, umask and
stdin/stdout/stderr (received as file descriptors), default signal handling. Then it runs
``b24agent.cli.client.main``, flushes, and sends the exit code back; the caller exits with it.

It serves only a process of this user confined exactly as the server (``confinement.py``):
a call from a sandbox runs in the caller's process, where the sandbox applies.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from ...guard import deferred
from ..client import main as run_call
from ..common import as_b24_error
from ..output import dump_line
from . import confinement, wire
from .wire import EXITED, GO, READY

__all__ = [
    "SignalRelay",
    "confined_as_this_server",
    "own_confinement",
    "serve",
    "serve_call",
    "take_stdio",
]

#: Longest request accepted: argv plus the environment (a real one is a few KB).
MAX_REQUEST_BYTES = 1 << 20
#: getsockopt option giving a pidfd of the connected peer (Linux 6.5; Python 3.11 lacks the name).
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
#: Signals a caller may pass on: it reacts to them as it would in its own process.
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def serve_call(conn: socket.socket, relay: SignalRelay | None = None) -> None:
    """Serve the call on ``conn`` if it comes from this user, confined exactly as this server,
    and the caller says go. Otherwise the connection closes before READY, nothing has run, and
    the caller runs the call itself, inside whatever confines it. ``relay``: started ahead."""
    pid, uid = _peer(conn)
    if uid == os.getuid() and confined_as_this_server(conn, pid):
        serve(conn, _become_the_caller, lambda request: run_call(request.argv[1:]), relay)


@functools.cache
def own_confinement() -> tuple[str, ...] | None:
    """This server's confinement, read once in the parent (``server.main``) so that each
    worker compares with it for free."""
    return confinement.of_self()


def confined_as_this_server(conn: socket.socket, pid: int) -> bool:
    """Whether the connecting process is confined exactly as this server (``confinement.py``),
    as the kernel shows it, whatever its request will say. With SO_PEERPIDFD (Linux 6.5) the
    process that connected is pinned: if it still lives after its ``/proc`` entry was read, that
    entry was its own, not that of a process given its pid since."""
    own = own_confinement()
    if own is None or pid <= 0:
        return False  # unreadable, or a caller in a pid namespace this server cannot see
    pidfd = _peer_pidfd(conn)
    try:
        seen = confinement.of_process(pid)
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, 0)
    except OSError:
        return False  # the connecting process is gone
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return seen == own


def _peer_pidfd(conn: socket.socket) -> int | None:
    """A pidfd of the process that connected, or None before Linux 6.5."""
    try:
        return conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return None


class SignalRelay:
    """The thread that raises here each signal the caller relays (``_relay_signals``). A warm
    spare starts it while it waits for a call, so the call does not wait for a thread to start
    (0.2 ms after a pause); it reads nothing until it is given the call's connection."""

    def __init__(self) -> None:
        self._conns: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, conn: socket.socket) -> None:
        """Relay the signals that come on ``conn`` from now on."""
        self._conns.put(conn)

    def _run(self) -> None:
        _relay_signals(self._conns.get())


def serve(
    conn: socket.socket,
    become: Callable[[wire.Request, list[int]], None],
    run: Callable[[wire.Request], int],
    relay: SignalRelay | None = None,
) -> None:
    """Receive one call, wait for GO, ``become`` the caller, ``run`` it, send the exit code.

    Shared by the warm server and the broker, which differ in how much of the caller they take
    on (everything, or only its stdio) and in what they run; ``relay`` started ahead, if any.
    """
    request, fds = _receive(conn)
    conn.sendall(READY)
    if conn.recv(1) != GO:
        return  # the caller gave up or was interrupted first: it never started, nor will it
    conn.settimeout(None)  # the call itself may take as long as it takes
    become(request, fds)
    (relay or SignalRelay()).watch(conn)
    with deferred.deferring():  # the audit head moves once the caller has its exit code
        try:
            code = run(request)
        except KeyboardInterrupt as exc:  # relayed before the call's own handling was in place
            sys.stderr.write(dump_line(as_b24_error(exc).to_json()) + "\n")
            code = as_b24_error(exc).exit_code
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # e.g. stdout's reader left; the call reported it
                stream.flush()
        # The call is over: a signal now (the caller leaving once it has the code is one)
        # would only cut the head's move short.
        for sig in RELAYED:
            signal.signal(sig, signal.SIG_IGN)
        conn.sendall(EXITED + b"%d\n" % code)
        _let_go_of_stdio()


def _let_go_of_stdio() -> None:
    """Point 0, 1 and 2 at /dev/null, so that a reader of the caller's output (``$(b24 ...)``)
    sees its end now, not when this worker exits."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def take_stdio(request: wire.Request, fds: list[int]) -> None:
    """Take the caller's stdin/stdout/stderr and argv, with default signal handling.

    Nothing else: which signals to ignore is the caller's to say only to a worker of its own
    user (``_become_the_caller``); a broker's worker is the operator's process, and its reaction
    to the operator's signals (``systemctl stop``) is not a caller's to choose."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = request.argv
    sys.stdin, sys.stdout, sys.stderr = _stdio()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _become_the_caller(request: wire.Request, fds: list[int]) -> None:
    """Take the caller's folder, umask, environment and time zone, then its stdio and the
    signals it ignores (``nohup``): only ones it could relay, so no number (SIGKILL) can make
    this worker fail before it answers."""
    os.chdir(request.cwd)
    os.umask(request.umask)
    _take_environment(request.env)
    time.tzset()
    tempfile.tempdir = None  # found again from this environment's TMPDIR
    take_stdio(request, fds)
    for sig in RELAYED:
        if sig in request.ignored:
            signal.signal(sig, signal.SIG_IGN)


def _take_environment(env: dict[str, str]) -> None:
    """Make ``os.environ`` exactly ``env``, by difference: the server's own environment is that
    of the caller that started it, less B24_* values, so most entries need no putenv (clearing
    and refilling 60 entries was 0.25 ms after a pause)."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _peer(conn: socket.socket) -> tuple[int, int]:
    """The kernel's word on who connected (struct ucred: pid, uid, gid): pid and uid."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[:4], sys.byteorder), int.from_bytes(creds[4:8], sys.byteorder)


def _receive(conn: socket.socket) -> tuple[wire.Request, list[int]]:
    """Read exactly one framed request (later bytes are signals) and the three stdio fds."""
    head, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
    head += _read_exactly(conn, 4 - len(head))
    size = wire.frame_length(head)
    if size > MAX_REQUEST_BYTES or len(fds) != 3:
        raise ValueError("not a b24 request")
    return wire.decode_request(_read_exactly(conn, size)), fds


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise EOFError("the caller left before sending its request")
        data += more
    return data


def _stdio() -> tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]:
    """Text streams over the caller's fds, buffered as Python buffers its own: stdout by line
    on a terminal and by block otherwise, stderr by line."""
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").partition(":")[0] or "utf-8"
    line_buffered_stdout = 1 if os.isatty(1) else -1
    return (
        open(0, encoding=encoding, closefd=False),
        open(1, "w", encoding=encoding, closefd=False, buffering=line_buffered_stdout),
        open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1),
    )


def _relay_signals(conn: socket.socket) -> None:
    """Each byte from the caller is a signal to raise here; the caller gone is a Ctrl-C.

    Raised on the main thread, so a blocking read there is interrupted rather than finished.
    """
    main = threading.main_thread().ident
    assert main is not None
    while True:
        try:
            data = conn.recv(16)
        except OSError:
            data = b""
        if not data:
            signal.pthread_kill(main, signal.SIGINT)
            return
        for signum in data:
            if signum in RELAYED:
                signal.pthread_kill(main, signum)
