"""``b24``'s entry point: hand the call to the warm server, or run it in this process.

A cold ``b24 user.current`` spends 250 ms importing requests, jsonschema, tenacity and filelock
before its first byte goes out; an agent makes hundreds of such calls. The warm server
(``warm_server.py``) has them imported already and forks a worker per call, so this side only
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
import os
import sys

from . import warm_wire

__all__ = ["main", "server_command", "server_env"]

#: The worker took the call: from here on, falling back in-process could run it twice.
STARTED = b"S"
#: Followed by the exit code and a newline: the call is over and its output flushed.
EXITED = b"X"
#: Signals passed on to the worker; the worker reacts as this process would have.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
#: What this side prints if the worker vanishes mid-call (killed, out of memory): exit 7.
WORKER_LOST = (
    '{"error": {"code": "WARM_WORKER_LOST", "message": "the b24 server\'s worker ended before '
    'the call did", "hint": "a write may or may not have happened; check the portal before '
    'repeating it (B24_SERVER=off runs calls in-process)", "retryable": false}}\n'
)
EXIT_OUTCOME_UNKNOWN = 7
#: A worker says it started at once; a server that stays silent this long is not serving, and
#: the call runs here instead (the worker never starts once its caller has left).
TAKE_TIMEOUT_S = 10.0
#: Ctrl-C before the worker took the call: nothing was sent, nothing will be.
CANCELLED = (
    '{"error": {"code": "INTERRUPTED", "message": "interrupted before the call started", '
    '"hint": "nothing was sent to the portal", "retryable": true}}\n'
)
EXIT_INTERRUPTED = 130


def main() -> int:
    """Run ``b24`` with ``sys.argv``; the exit code is the call's, wherever it ran."""
    where = warm_wire.address() if warm_wire.enabled() else None
    if where is not None:
        try:
            code = _through_server(where)
        except KeyboardInterrupt:
            os.write(2, CANCELLED.encode())
            return EXIT_INTERRUPTED
        if code is not None:
            # The worker wrote the output and this process holds nothing to flush: skip the
            # interpreter's teardown, 2 ms of a 25 ms call.
            os._exit(code)
    from .client import main as run_here

    return run_here()


def _through_server(where: str) -> int | None:
    """The call's exit code via the server; None when the server did not take the call."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(where)
    except OSError:
        sock.close()
        _start_server(where)
        return None
    try:
        request = warm_wire.encode_request(sys.argv, dict(os.environ), os.getcwd(), _umask())
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.settimeout(TAKE_TIMEOUT_S)
        return _Waiter(sock).exit_code()
    except OSError:
        return None  # a closed stdin/stdout, a server that went away before taking the call
    finally:
        sock.close()


def _umask() -> int:
    current = os.umask(0o077)
    os.umask(current)
    return current


class _Waiter:
    """Waits for the worker's exit code, passing this process's signals on to it."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.started = False
        self.fatal: int | None = None
        self.signalled = False

    def exit_code(self) -> int | None:
        previous = {sig: _signal.signal(sig, self._forward) for sig in FORWARDED}
        try:
            return self._read()
        finally:
            for sig, handler in previous.items():
                _signal.signal(sig, handler)

    def _forward(self, signum: int, _frame: object) -> None:
        # Sent even before the worker said it started: it reads signals only after the
        # request, so a Ctrl-C at any moment reaches the call, never a fallback run.
        self.signalled = True
        if signum != _signal.SIGINT:
            self.fatal = signum
        try:  # noqa: SIM105 - contextlib costs 2 ms of start-up
            self.sock.send(bytes([signum]))
        except OSError:
            pass  # the worker is already gone; the read below reports it

    def _read(self) -> int | None:
        while True:
            try:
                chunk = self.sock.recv(64)
            except OSError:
                if self.started:
                    return self._lost()
                raise  # not taken: the caller runs the call here
            if not chunk:
                if self.started:
                    return self._lost()
                if self.signalled:
                    raise KeyboardInterrupt  # not taken, and not to be run here either
                return None
            self.buffer += chunk
            if not self.started and self.buffer.startswith(STARTED):
                self.started = True
                self.sock.settimeout(None)  # the call itself may take as long as it takes
                self.buffer = self.buffer[len(STARTED) :]
            if self.started and self.buffer.startswith(EXITED) and self.buffer.endswith(b"\n"):
                return int(self.buffer[len(EXITED) : -1])

    def _lost(self) -> int:
        if self.fatal is not None:
            # The worker died of the TERM/HUP passed to it: end the same way.
            _signal.signal(self.fatal, _signal.SIG_DFL)
            os.kill(os.getpid(), self.fatal)
        os.write(2, WORKER_LOST.encode())
        return EXIT_OUTCOME_UNKNOWN


def server_command(where: str) -> list[str]:
    """The command that runs the warm server for socket ``where`` (it needs this folder on its
    path when the skill folder is used without being installed)."""
    scripts = os.path.dirname(warm_wire.PACKAGE_DIR)
    code = (
        f"import sys; sys.path.insert(0, {scripts!r}); "
        "from b24agent.cli.warm_server import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code, where]


def server_env(environ: dict[str, str]) -> dict[str, str]:
    """The server's own environment: no B24_* values (credentials); each call brings its own."""
    return {
        key: value
        for key, value in environ.items()
        if not key.startswith("B24_") or key.startswith("B24_SERVER")
    }


def _start_server(where: str) -> None:
    """Start the server in the background for the next call; this call runs here meanwhile."""
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
