"""A rehearsal call for the warm server, so forked workers find every lazy cost already paid.

Importing modules is not enough: the first real call in a process also compiles regexes, builds
filelock's and jsonschema's caches, parses HTTP headers through ``email`` and reads the catalog.
Measured on a worker, those first-time costs were half its 13 ms. So the server, once, runs the
most common call (``user.current``) end to end against a stub portal on a loopback port, with a
throwaway state folder and a webhook code that means nothing; its output goes nowhere.

The throwaway folder is named after the process rehearsing (``b24-rehearsal-PID-...``), so a
rehearsal killed before it could remove its folder does not leave it for good: the warm server
removes the folders of each child it reaps (``sweep(pid)``, before the pid can be reused), and a
server starting removes those of processes that no longer exist (``sweep()``), say of a server
killed with its spares. Only folders of this user are touched, and never one whose process runs:
processes are told apart by pid, so a process of this user in another pid namespace sharing the
same scratch folder is the one case not covered.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["rehearse", "sweep"]

#: What the stub portal answers to anything: a minimal success envelope.
STUB_ANSWER = json.dumps(
    {"result": {"ID": "1"}, "time": {"start": 0, "finish": 0, "duration": 0, "processing": 0}}
).encode()
#: How often the stub portal checks for shutdown (seconds).
POLL_S = 0.002
#: Not a secret: the stub portal accepts any code.
STUB_CODE = "warmupwarmupwarmup"
#: Where the throwaway state folder goes when this memory-backed folder is usable: there its
#: fsyncs cost nothing, and a spare rehearsing after each call (20-60 ms, most of it waiting
#: for the disk under load) does not queue its fsyncs beside the next real call's.
SCRATCH = "/dev/shm"
#: The start of a throwaway folder's name; the rehearsing process's pid follows.
PREFIX = "b24-rehearsal-"
_NAMED = re.compile(re.escape(PREFIX) + r"([0-9]+)-")
#: The largest pid Linux can give (PID_MAX_LIMIT, 2**22 on 64-bit): a larger number in a
#: folder's name was not made by a rehearsal.
PID_MAX = 2**22


class _StubPortal(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # a kept-alive connection must not hold up the server's shutdown

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(STUB_ANSWER)))
        self.end_headers()
        self.wfile.write(STUB_ANSWER)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the server has no terminal."""


def rehearse(calls: int = 2) -> None:
    """Run ``b24 user.current`` ``calls`` times against a stub portal, in one state folder;
    leave the environment as it was.

    A first call finds no state files, so only a second one reads them: it builds the
    validators of the limiter's and the audit head's schemas (0.8 ms of a worker's call when
    left to each worker) and walks the paths every real call takes once its folder exists.
    """
    from ..client import main as run_call

    portal = http.server.HTTPServer(("127.0.0.1", 0), _StubPortal)
    # A short poll so shutdown() returns at once; the default half second would keep the
    # spare worker from taking calls for that long.
    thread = threading.Thread(target=portal.serve_forever, args=(POLL_S,), daemon=True)
    thread.start()
    saved_env, saved_streams, saved_argv = dict(os.environ), (sys.stdout, sys.stderr), sys.argv
    try:
        with (
            tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=_scratch()) as folder,
            open(os.devnull, "w") as nowhere,
            _chdir(folder),
        ):
            port = portal.server_address[1]
            os.environ["B24_WEBHOOK_URL"] = f"http://127.0.0.1:{port}/rest/1/{STUB_CODE}/"
            os.environ["B24_STATE_DIR"] = folder
            sys.stdout = sys.stderr = nowhere
            sys.argv = ["b24", "user.current"]  # the parser is cached under this program name
            for _ in range(calls):
                run_call(sys.argv[1:])
    finally:
        sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        portal.shutdown()
        portal.server_close()
        thread.join()  # the server forks next: it must be back to one thread


def sweep(pid: int | None = None) -> None:
    """Remove this user's throwaway folders left by process ``pid`` (a child just found dead,
    not yet reaped), or with None by any process that no longer exists.

    The scratch folder is world-writable: any user may make a folder there with any name. So
    the owner is checked first (``lstat``, never through a link), and a name whose number could
    not be a pid is skipped; before, ``mkdir b24-rehearsal-99999999999999999999999-x`` by any
    user made ``os.kill`` raise, and every user's server died starting."""
    where = _scratch() or tempfile.gettempdir()
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        named = _NAMED.match(name)
        if named is None:
            continue
        path = os.path.join(where, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        owner = int(named.group(1))
        if not 0 < owner <= PID_MAX:
            continue
        if owner == pid if pid is not None else not _exists(owner):
            shutil.rmtree(path, ignore_errors=True)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _scratch() -> str | None:
    """SCRATCH if this user may make a folder there, else None (the usual temp folder)."""
    return SCRATCH if os.path.isdir(SCRATCH) and os.access(SCRATCH, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def _chdir(folder: str) -> Iterator[None]:
    """``contextlib.chdir``, which Python 3.10 lacks."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
