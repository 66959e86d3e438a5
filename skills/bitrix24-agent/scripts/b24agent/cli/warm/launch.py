"""``b24``'s entry point: hand the call to the warm server, or run it in this process.

A cold ``b24 user.current`` spends 250 ms importing requests, jsonschema, tenacity and filelock
before its first byte goes out; an agent makes hundreds of such calls. The warm server
(``warm/server.py``) has them imported already and forks a worker per call, so this side only
sends its arguments, environment, folder and umask, and passes its own stdin, stdout and stderr
(SCM_RIGHTS): the worker reads and writes them directly and the output is byte for byte what
the call would print in-process. The exit code comes back last.

The first call (no server yet) runs here as before and starts the server for the next one.
``B24_SERVER=off`` keeps every call in its own process. Nothing is ever run twice: the call
falls back to this process only when the server did not take it.
"""

from __future__ import annotations

import _signal
import _socket
import errno
import os
import sys

from . import wire

TYPE_CHECKING = False  # typing costs start-up time; only the annotations need it
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ServedCall", "main", "say", "server_command", "server_env"]

#: Signals passed on to the worker (unless ignored here); it reacts as this process would have.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
#: What this side prints if the worker vanishes mid-call (killed, out of memory): exit 7.
WORKER_LOST = (
    '{"error": {"code": "WARM_WORKER_LOST", "message": "the b24 server\'s worker ended before '
    'the call did", "hint": "a write may or may not have happened; check the portal before '
    'repeating it (B24_SERVER=off runs calls in-process)", "retryable": false}}\n'
)
#: The same for a brokered call: the broker's worker was killed, or the broker restarted.
BROKER_WORKER_LOST = (
    '{"error": {"code": "BROKER_WORKER_LOST", "message": "the b24 broker\'s worker ended before '
    'the call did", "hint": "a write may or may not have happened; check the portal before '
    'repeating it", "retryable": false}}\n'
)
EXIT_OUTCOME_UNKNOWN = 7
#: A worker answers READY at once; a server that stays silent this long is not serving, and
#: the call runs here instead.
TAKE_TIMEOUT_S = 10.0
#: A signal before GO: nothing was sent, nothing will be.
CANCELLED = (
    '{"error": {"code": "INTERRUPTED", "message": "interrupted before the call started", '
    '"hint": "nothing was sent to the portal", "retryable": true}}\n'
)
EXIT_INTERRUPTED = 130
#: What connect says when no server listens on the socket (none yet, or one that left): only
#: then is one started. A seccomp filter refusing connect (EPERM) would refuse its bind too.
NOBODY_LISTENS = (errno.ENOENT, errno.ECONNREFUSED)
#: How the server's lock file is made: never through a link, never inherited by a child.
LOCK_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags that never call the portal (help, version, catalog look-ups, installing the skill):
#: they run here and neither use nor start a server.
LOCAL_FLAGS = frozenset(
    {"-h", "--help", "--version", "--explain", "--list-packs", "--install-skill"}
)


def main() -> int:
    """Run ``b24`` with ``sys.argv``; the exit code is the call's, wherever it ran."""
    if os.environ.get("B24_BROKER"):
        from .brokered import forward

        os._exit(forward(os.environ["B24_BROKER"]))
    local = any(arg.partition("=")[0] in LOCAL_FLAGS for arg in sys.argv[1:])
    where = wire.dial() if wire.enabled() and not local else None
    if where is not None:
        try:
            code = ServedCall(where[0], through=where[1]).run()
        except KeyboardInterrupt:  # before our handlers were in place: nothing was sent
            code = say(CANCELLED, EXIT_INTERRUPTED)
        if code is not None:
            # The worker wrote the output and this process holds nothing to flush: skip the
            # interpreter's teardown, 2 ms of a 25 ms call.
            os._exit(code)
    from ..client import main as run_here

    return run_here()


def say(line: str, code: int, fd: int = 2) -> int:
    try:  # noqa: SIM105 - contextlib costs 2 ms of start-up
        os.write(fd, line.encode())
    except OSError:
        pass  # stderr is gone; the exit code still tells
    return code


def _umask() -> int:
    current = os.umask(0o077)
    os.umask(current)
    return current


class ServedCall:
    """One call through the server: request, go-ahead, relayed signals, exit code.

    ``run`` returns None only while nothing can have run (no server, or it never got READY
    to us), and the caller then runs the call itself (warm server) or reports ``failure``
    (broker). A brokered call sends no environment and no folder: the broker uses its own.
    """

    def __init__(
        self,
        where: str,
        *,
        through: str | None = None,
        brokered: bool = False,
        argv: list[str] | None = None,
        stdio: tuple[int, int, int] = (0, 1, 2),
        trusts: Callable[[int | None], bool] | None = None,
        claim: str | None = None,
    ) -> None:
        """``trusts``: for a brokered call, whether the uid serving the socket (None: unknown)
        may be sent the call; when it says no, ``run`` returns None and ``distrusted`` is set.
        ``claim``: what the caller says about itself (the MCP client and tool), the only
        environment a brokered call carries; the broker records it and decides nothing by it."""
        self.where = where
        #: The path to connect to (wire.dial's, through the checked folder), if not ``where``.
        self.through = through or where
        self.brokered = brokered
        self.argv = sys.argv if argv is None else argv
        self.stdio = stdio
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.started = False
        self.pending: list[int] = []
        self.failure: OSError | None = None
        self.trusts = trusts
        self.claim = claim
        #: The serving uid ``trusts`` refused (nothing was sent to it), or None.
        self.distrusted: int | None = None

    def run(self, *, relay_signals: bool = True) -> int | None:
        """The exit code; ``relay_signals=False`` for a library caller (no handlers installed,
        which only the main thread may do; the call ends when it ends)."""
        if not relay_signals:
            try:
                return self._run([])
            finally:
                self.sock.close()
        ignored = [s for s in FORWARDED if _signal.getsignal(s) == _signal.SIG_IGN]
        relayed = [s for s in FORWARDED if s not in ignored]
        previous = {sig: _signal.signal(sig, self._on_signal) for sig in relayed}
        try:
            return self._run(ignored)
        finally:
            self.sock.close()
            for sig, handler in previous.items():
                _signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)
        if self.started:
            self._relay()

    def _relay(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            try:  # noqa: SIM105 - contextlib costs 2 ms of start-up
                self.sock.send(bytes([signum]))
            except OSError:
                pass  # the worker is already gone; the read reports it

    def _run(self, ignored: list[int]) -> int | None:
        try:
            self.sock.connect(self.through)
        except OSError as exc:
            self.failure = exc
            if not self.brokered and exc.errno in NOBODY_LISTENS:
                _start_server(self.where, self.through)
            return None
        if not self.brokered and _peer_uid(self.sock) != os.getuid():
            return None  # another user's socket: it gets nothing, and the call runs here
        if self.trusts is not None and not self.trusts(uid := _peer_uid(self.sock)):
            self.distrusted = -1 if uid is None else uid
            return None  # not the broker the operator named: it gets nothing
        try:
            if self.brokered:
                said = {"B24_BROKER_CLAIM": self.claim} if self.claim else {}
                request = wire.encode_request(self.argv, said, "/", 0o077, ignored)
            else:
                request = wire.encode_request(
                    self.argv, dict(os.environ), os.getcwd(), _umask(), ignored
                )
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in self.stdio)
            self.sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            self.sock.settimeout(TAKE_TIMEOUT_S)
            if self.sock.recv(1) != wire.READY:
                return None  # the server went away before taking the call
        except OSError as exc:
            self.failure = exc
            return None  # a closed stdin/stdout, a silent or vanished server
        if self.pending:
            return self._cancelled()
        try:
            self.sock.settimeout(None)  # the call itself may take as long as it takes
            self.sock.sendall(wire.GO)
            self.started = True
            self._relay()  # a signal that came between the check above and GO
            return self._exit_code()
        except OSError:
            return self._lost()

    def _exit_code(self) -> int:
        buffer = b""
        while not (buffer.startswith(wire.EXITED) and buffer.endswith(b"\n")):
            chunk = self.sock.recv(64)
            if not chunk:
                return self._lost()
            buffer += chunk
        return int(buffer[len(wire.EXITED) : -1])

    def _cancelled(self) -> int:
        """Exit as an interruption by the first signal would have in-process: 130 for Ctrl-C,
        128 + the signal for SIGTERM/SIGHUP (``rest.interrupts``)."""
        first = self.pending[0]
        code = EXIT_INTERRUPTED if first == _signal.SIGINT else 128 + first
        return say(CANCELLED, code, self.stdio[2])

    def _lost(self) -> int:
        lost = BROKER_WORKER_LOST if self.brokered else WORKER_LOST
        return say(lost, EXIT_OUTCOME_UNKNOWN, self.stdio[2])


def _peer_uid(sock: _socket.socket) -> int | None:
    """The kernel's word on who listens (struct ucred: pid, uid, gid): its uid, or None. A
    warm server must be this user's; a broker must not be (``ServedCall.trusts``)."""
    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[4:8], sys.byteorder)


def server_command(where: str) -> list[str]:
    """The command that runs the warm server for socket ``where`` (it needs this folder on its
    path when the skill folder is used without being installed)."""
    scripts = os.path.dirname(wire.PACKAGE_DIR)
    code = (
        f"import sys; sys.path.insert(0, {scripts!r}); "
        "from b24agent.cli.warm.server import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code, where]


def server_env(environ: dict[str, str]) -> dict[str, str]:
    """The server's own environment: no B24_* values (credentials); each call brings its own."""
    return {
        key: value
        for key, value in environ.items()
        if not key.startswith("B24_") or key.startswith("B24_SERVER")
    }


def _start_server(where: str, through: str) -> None:
    """Start the server in the background for the next call; this call runs here meanwhile.

    Not where it could not bind: a sandbox that forbids writing the folder (Landlock, a
    read-only mount) would see a server started, and failing, on every call. The server's lock
    file is made here first, as the server makes it, through the checked folder. Nor within
    RESTART_AFTER_S of a start whose server never answered (its ``.starting`` stamp is still
    there): one that died warming up would die again, and every call would pay for it."""
    stamp = through + wire.STARTING
    try:
        started = os.lstat(stamp).st_mtime
    except OSError:
        started = None
    if started is not None:
        import time

        if 0 <= time.time() - started < wire.RESTART_AFTER_S:
            return
    try:
        os.close(os.open(through + ".lock", LOCK_FLAGS, 0o600))
        made = os.open(stamp, LOCK_FLAGS, 0o600)
        try:
            os.utime(made)  # now, also when an old stamp was there
        finally:
            os.close(made)
    except OSError:
        return
    import subprocess

    try:  # noqa: SIM105 - the import-light style of this module
        subprocess.Popen(
            server_command(where),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=server_env(dict(os.environ)),
            cwd="/",  # hold no caller's folder open; each call brings its own
            start_new_session=True,
        )
    except OSError:
        pass  # no server this time; the call itself does not depend on it
