"""The private wire between ``b24`` and its warm server: where the socket lives, when it is used,
and how one call is framed.

``b24`` imports this on every start, before anything else, so it uses only modules that are
already loaded or built into the interpreter (``os``, ``sys``, ``_socket``, ``zlib``): importing
``socket`` alone (enum, selectors) costs 7 ms and ``json`` 3 ms, against a 9 ms ``curl``.

The socket sits in a folder only this user can enter. Its name carries a stamp of the code (the
interpreter, the package folder and every module's mtime), so after an upgrade or an edit the
next call starts a fresh server and the old one exits when idle; no call runs stale code.
"""

from __future__ import annotations

import os
import sys
import zlib

__all__ = [
    "MAGIC",
    "Request",
    "address",
    "code_stamp",
    "decode_request",
    "enabled",
    "encode_request",
    "frame_length",
    "private_folder",
]

#: First field of every request; bumped when the framing changes.
MAGIC = b"b24-warm-1"
#: AF_UNIX paths longer than this do not fit ``sockaddr_un`` (108 bytes with the final NUL).
MAX_SOCKET_PATH = 100
#: The package this module belongs to, whose code the stamp covers.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Values of B24_SERVER that keep every call in its own process.
OFF_VALUES = ("off", "0", "no", "false")


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """The warm server is used on Linux (it checks callers with SO_PEERCRED) unless B24_SERVER
    is off. Read from the real environment only: ``.env`` is parsed later, by the call itself."""
    choice = environ.get("B24_SERVER", "on").strip().lower()
    return sys.platform.startswith("linux") and choice not in OFF_VALUES


def private_folder(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """``$XDG_RUNTIME_DIR/bitrix24-agent`` or ``$TMPDIR/bitrix24-agent-<uid>``, made 0700.

    None when the folder is not a plain directory owned by this user and closed to everyone
    else: in a shared /tmp another user could have made it first to catch our calls.
    """
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        folder = os.path.join(runtime, "bitrix24-agent")
    else:
        folder = os.path.join(environ.get("TMPDIR") or "/tmp", f"bitrix24-agent-{os.getuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(folder)
    except OSError:
        return None
    is_dir = (info.st_mode & 0o170000) == 0o040000
    if not is_dir or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def code_stamp(package_dir: str = PACKAGE_DIR) -> str:
    """A short hash of what a server would run: the environment (``sys.prefix``, so ``python``
    and ``python3`` of one venv agree), the interpreter version, the package and its mtimes."""
    parts = [sys.prefix, sys.version, package_dir]
    pending = [package_dir]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith((".py", ".json")):
                    parts.append(f"{entry.name}:{entry.stat().st_mtime_ns}")
    return f"{zlib.crc32(chr(0).join(sorted(parts)).encode()):08x}"


def address(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """The server socket for this code, or None when the server cannot be used safely."""
    folder = private_folder(environ)
    if folder is None:
        return None
    path = os.path.join(folder, f"b24-{code_stamp()}.sock")
    return path if len(path.encode()) <= MAX_SOCKET_PATH else None


class Request:
    """One call as the server receives it: what the process would have had itself."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, umask: int) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.umask = umask


def encode_request(argv: list[str], env: dict[str, str], cwd: str, umask: int) -> bytes:
    """NUL-separated fields (argv and environment strings cannot hold NUL), length-prefixed."""
    fields = [MAGIC, os.fsencode(cwd), b"%d" % umask, b"%d" % len(argv)]
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
    if len(fields) < 4 or fields[0] != MAGIC:
        raise ValueError("not a b24 warm-server request")
    cwd, umask, count = os.fsdecode(fields[1]), int(fields[2]), int(fields[3])
    argv = [os.fsdecode(arg) for arg in fields[4 : 4 + count]]
    if len(argv) != count:
        raise ValueError("truncated argument list")
    env = {}
    for pair in fields[4 + count :]:
        key, sep, value = pair.partition(b"=")
        if not sep:
            raise ValueError("malformed environment entry")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return Request(argv, env, cwd, umask)
