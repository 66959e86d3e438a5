"""The private wire between ``b24`` and its warm server: where the socket lives, when it is used,
and how one call is framed.

``b24`` imports this on every start, before anything else, so it uses only modules that are
already loaded or built into the interpreter (``os``, ``sys``, ``_socket``) and ours: importing
``socket`` alone (enum, selectors) costs 7 ms and ``json`` 3 ms, against a 9 ms ``curl``.

The socket sits in a folder only this user can enter. The caller opens that folder without
following a link, checks the open folder (owner, mode) and connects through it
(``/proc/self/fd/N/NAME``), so a folder renamed or swapped after the check cannot redirect the
call; and before it sends anything it asks the kernel who listens (SO_PEERCRED, launch.py).
The socket's name carries a stamp of the code (the interpreter, the package folder and every
module's mtime), so after an upgrade or an edit the next call starts a fresh server and the old
one exits when idle; no call runs stale code. It carries the caller's confinement too
(``confinement.py``), so a sandboxed caller gets a server of its own sandbox.
"""

from __future__ import annotations

import os
import sys

from . import confinement

__all__ = [
    "DONE",
    "EXITED",
    "GO",
    "MAGIC",
    "READY",
    "RESTART_AFTER_S",
    "STARTING",
    "TAKEN",
    "Request",
    "address",
    "code_stamp",
    "decode_request",
    "dial",
    "enabled",
    "encode_request",
    "frame_length",
    "private_folder",
]

#: First field of every request; bumped when the framing changes.
MAGIC = b"b24-warm-2"
#: AF_UNIX paths longer than this do not fit ``sockaddr_un`` (108 bytes with the final NUL).
MAX_SOCKET_PATH = 100
#: The package this module belongs to, whose code the stamp covers.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Worker to caller: the request arrived; it waits for GO and starts nothing before.
READY = b"S"
#: Caller to worker: run it. Only the caller decides, so a call is never run twice: a caller
#: that gave up (timeout, Ctrl-C) closes instead, and a worker that reads EOF just exits.
GO = b"G"
#: Followed by the exit code and a newline: the call is over and its output flushed.
EXITED = b"X"
#: What a spare tells the parent when it takes a call: this byte, then its pid (4 bytes).
TAKEN = b"T"
#: The same when its call is over (exit code sent): the parent forks its successor then.
DONE = b"D"
#: The stamp is its text read as one number, modulo this prime (2**31 - 1): any change to the
#: text changes it but for a chance of 1 in 2 billion, and unlike ``zlib.crc32`` it needs no
#: extension module loaded (0.3 ms of each call).
STAMP_MODULUS = 0x7FFFFFFF
#: Modules no ``b24`` call runs, below the package: the sandbox portal, the offline worker, the
#: demo, the other front ends (the broker, the MCP server) and the Redis store. redis-py is
#: imported only when B24_STATE_BACKEND names a Redis, and the MCP server's packages come from
#: requirements-mcp.txt: a skill folder set up from requirements.txt alone has neither, and a
#: server importing them died at start-up, so every call ran cold. The server never imports
#: them (a call that needs one reads it from disk then), so the stamp leaves them out too.
NOT_SERVED = (
    "sandbox",
    "worker",
    "cli.demo",
    "cli.sandbox",
    "cli.worker",
    "broker",
    "mcp",
    "backends.redis_store",
)
#: Next to the socket, made by the caller that starts a server and removed by the server once it
#: answers: while this is younger than RESTART_AFTER_S, no caller starts another (one that died
#: starting, e.g. a package missing, would die again, each start costing a whole import).
STARTING = ".starting"
RESTART_AFTER_S = 60
#: Values of B24_SERVER that keep every call in its own process.
OFF_VALUES = ("off", "0", "no", "false")


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """The warm server is used on Linux (it checks callers with SO_PEERCRED) unless B24_SERVER
    is off. Read from the real environment only: ``.env`` is parsed later, by the call itself."""
    choice = environ.get("B24_SERVER", "on").strip().lower()
    return sys.platform.startswith("linux") and choice not in OFF_VALUES


def _folder_path(environ: os._Environ[str] | dict[str, str]) -> str:
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "bitrix24-agent")
    return os.path.join(environ.get("TMPDIR") or "/tmp", f"bitrix24-agent-{os.getuid()}")


def _open_private_folder(environ: os._Environ[str] | dict[str, str]) -> int | None:
    """A descriptor of the folder, made 0700 if missing, opened without following a link and
    checked as opened: a directory owned by this user and closed to everyone else (in a shared
    /tmp another user could have made it first to catch our calls). None otherwise."""
    folder = _folder_path(environ)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def private_folder(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """``$XDG_RUNTIME_DIR/bitrix24-agent`` or ``$TMPDIR/bitrix24-agent-<uid>``, made 0700;
    None when it is not a plain directory owned by this user and closed to everyone else."""
    fd = _open_private_folder(environ)
    if fd is None:
        return None
    os.close(fd)
    return _folder_path(environ)


def code_stamp(package_dir: str = PACKAGE_DIR, confined: tuple[str, ...] = ()) -> str:
    """A short hash of what a server would run and where: the environment (``sys.prefix``, so
    ``python`` and ``python3`` of one venv agree), interpreter version and flags, the package
    and the mtimes of the modules it serves (not NOT_SERVED), and ``confined``, what confines
    this process (``confinement.py``: its namespaces, cgroup, ``no_new_privs``, seccomp, LSM
    label...), so a caller in a container or sandbox finds, or starts, a server confined as it
    is. The server checks that itself (``worker.py``): a name is only a hint."""
    parts = [sys.prefix, sys.version, str(sys.flags), package_dir, *confined]
    pending = [(package_dir, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name.removesuffix(".py")  # a module's dotted name
                if name.startswith(NOT_SERVED):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append((entry.path, name + "."))
                elif entry.name.endswith((".py", ".json")):
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                    parts.append(f"{entry.path}:{mtime}")
    summed = int.from_bytes(chr(0).join(sorted(parts)).encode(), "big") % STAMP_MODULUS
    return f"{summed:08x}"


def _socket_name() -> str | None:
    """None when this process's confinement cannot be read or a tracer holds it: the call
    then runs here, inside whatever confines it."""
    confined = confinement.of_self()
    if confined is None or confinement.traced(confined):
        return None
    try:
        return f"b24-{code_stamp(confined=confined)}.sock"
    except OSError:
        return None  # a module vanished mid-scan (an upgrade under way): run this call here


def address(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """The server socket for this code, or None when the server cannot be used safely."""
    folder = private_folder(environ)
    name = _socket_name()
    if folder is None or name is None:
        return None
    path = os.path.join(folder, name)
    return path if len(path.encode()) <= MAX_SOCKET_PATH else None


def dial(environ: os._Environ[str] | dict[str, str] = os.environ) -> tuple[str, str] | None:
    """``(path, through)``: the socket's path (where a server binds) and the path a caller
    connects to, through the folder it opened and checked, so that no rename after the check
    can hand the call to another user's socket. None when the server cannot be used safely."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    fd = _open_private_folder(environ)
    if fd is None:
        return None
    name = _socket_name()
    path = os.path.join(_folder_path(environ), name or "")
    if name is None or len(path.encode()) > MAX_SOCKET_PATH:
        os.close(fd)
        return None
    return path, f"/proc/self/fd/{fd}/{name}"


class Request:
    """One call as the server receives it: what the process would have had itself."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: str, umask: int, ignored: list[int]
    ) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.umask = umask
        #: Signals the caller ignores (``nohup``, a background job): a warm worker (same user)
        #: ignores those of them it relays too; the broker's worker does not read this.
        self.ignored = ignored


def encode_request(
    argv: list[str], env: dict[str, str], cwd: str, umask: int, ignored: list[int]
) -> bytes:
    """NUL-separated fields (argv and environment strings cannot hold NUL), length-prefixed."""
    signals = b",".join(b"%d" % signum for signum in ignored)
    fields = [MAGIC, os.fsencode(cwd), b"%d" % umask, signals, b"%d" % len(argv)]
    fields += [os.fsencode(arg) for arg in argv]
    fields += [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()]
    body = b"\0".join(fields)
    return len(body).to_bytes(4, "big") + body


def frame_length(head: bytes) -> int:
    """The body length announced by a request's first 4 bytes."""
    return int.from_bytes(head[:4], "big")


def decode_request(body: bytes) -> Request:
    """The inverse of ``encode_request`` (body without the length); ValueError when malformed."""
    fields = body.split(b"\0")
    if len(fields) < 5 or fields[0] != MAGIC:
        raise ValueError("not a b24 warm-server request")
    cwd, umask = os.fsdecode(fields[1]), int(fields[2])
    ignored = [int(signum) for signum in fields[3].split(b",") if signum]
    count = int(fields[4])
    argv = [os.fsdecode(arg) for arg in fields[5 : 5 + count]]
    if len(argv) != count:
        raise ValueError("truncated argument list")
    env = {}
    for pair in fields[5 + count :]:
        key, sep, value = pair.partition(b"=")
        if not sep:
            raise ValueError("malformed environment entry")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return Request(argv, env, cwd, umask, ignored)
