"""``b24`` with ``B24_BROKER=unix:PATH``: the call runs in the broker, never in this process.

The broker (``b24agent/broker``) holds the credentials, keys, state and policy under the
operator's account; this side holds no secret and sends only its arguments and its stdin,
stdout and stderr (the warm server's wire). No environment and no folder go along: the broker
runs every call under its own settings, so ``B24_PACKS=all`` here changes nothing.

Files named on the command line are read here, with this user's rights, and reach the broker as
stdin: ``--params @file`` and ``--batch-file FILE`` become ``-``. The broker itself opens no path
a caller names. If the broker cannot be reached the call fails (exit 6, or 4 when this user may
not connect); it never falls back to running here.

Before anything is sent, this side checks who serves the socket (SO_PEERCRED): a "broker"
running as this very user protects nothing (the agent could read all it holds), and with
``B24_BROKER_USER`` (a user name or uid, the operator's word) it must be exactly that user.
Otherwise the call is refused, exit 4, and the socket's owner gets nothing.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import NamedTuple

from .launch import ServedCall, say

__all__ = ["Brokered", "broker_uid", "call", "forward", "read_by_caller"]

EXIT_USAGE = 2
EXIT_CONFIG = 4
EXIT_TRANSIENT = 6
#: Flags whose value may name a file that this side reads: flag -> the prefix marking a file.
FILE_FLAGS = {"--params": "@", "--batch-file": ""}


class _Refusal(Exception):
    def __init__(self, code: str, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message)
        self.line = json.dumps(
            {
                "error": {
                    "code": code,
                    "message": message,
                    "hint": hint,
                    "retryable": exit_code == EXIT_TRANSIENT,
                }
            }
        )
        self.exit_code = exit_code


def forward(spec: str) -> int:
    """Run ``sys.argv`` in the broker at ``spec`` and return its exit code."""
    import sys

    try:
        where = _socket_path(spec)
        argv, stdin = read_by_caller(sys.argv)
        call = _served(where, argv, (stdin, 1, 2))
        try:
            code = call.run()
        except KeyboardInterrupt:
            from .launch import CANCELLED, EXIT_INTERRUPTED

            return say(CANCELLED, EXIT_INTERRUPTED)
        if code is None:
            raise _not_run(where, call)
        return code
    except _Refusal as refusal:
        return say(refusal.line + "\n", refusal.exit_code)


def _socket_path(spec: str) -> str:
    scheme, _, path = spec.partition(":")
    if scheme != "unix" or not path.startswith("/"):
        raise _Refusal(
            "CONFIG_INVALID",
            "B24_BROKER is malformed: expected unix:/absolute/path/to/socket",
            "fix B24_BROKER, e.g. unix:/run/b24-broker/b24.sock",
            EXIT_CONFIG,
        )
    return path


def check_address(spec: str) -> None:
    """Raise the error (a B24Error) a call to ``spec`` would end in when ``spec`` is not a
    broker address: a program that calls later (the offline worker) refuses before it takes
    a lock or writes state."""
    from ...errors import error_from_line

    try:
        _socket_path(spec)
    except _Refusal as refusal:
        raise error_from_line(refusal.exit_code, refusal.line) from None


def _served(where: str, argv: list[str], stdio: tuple[int, int, int]) -> ServedCall:
    """The call, sent only to a broker this side trusts (see the module docstring)."""
    expected = _expected_uid()
    return ServedCall(
        where,
        brokered=True,
        argv=argv,
        stdio=stdio,
        trusts=lambda uid: uid is not None and uid != os.getuid() and expected in (None, uid),
        claim=os.environ.get("B24_BROKER_CLAIM"),
    )


#: What a B24_BROKER_USER that names no account is told.
UNKNOWN_USER_HINT = "set B24_BROKER_USER to the account b24-broker runs as (a name or a uid)"


def broker_uid() -> int | None:
    """``B24_BROKER_USER`` as a uid (None: not set); KeyError when it names no account. The
    broker's admin commands (``b24-broker approve``...) check their server against it too."""
    named = os.environ.get("B24_BROKER_USER") or None
    if named is None or named.isdigit():
        return None if named is None else int(named)
    import pwd

    return pwd.getpwnam(named).pw_uid


def _expected_uid() -> int | None:
    """``broker_uid``; a name no account has is refused."""
    try:
        return broker_uid()
    except KeyError:
        named = os.environ.get("B24_BROKER_USER")
        raise _Refusal(
            "CONFIG_INVALID",
            f"B24_BROKER_USER names no user on this host: {named!r}",
            UNKNOWN_USER_HINT,
            EXIT_CONFIG,
        ) from None


def _not_run(where: str, call: ServedCall) -> _Refusal:
    """Why a brokered call was not sent: an untrusted server, or no broker to reach."""
    if call.distrusted is None:
        return _unreachable(where, call.failure)
    uid = call.distrusted
    if uid == os.getuid():
        why = f"it runs as this very user (uid {uid}) and so protects nothing"
    elif uid < 0:
        why = "the kernel does not say who serves it"
    else:
        why = f"it runs as uid {uid}, not as B24_BROKER_USER={os.environ.get('B24_BROKER_USER')}"
    return _Refusal(
        "BROKER_UNTRUSTED",
        f"refused to use the b24 broker at {where}: {why}",
        "nothing was sent; the operator runs b24-broker under its own account and names it in "
        "B24_BROKER_USER (a user name or uid)",
        EXIT_CONFIG,
    )


def _unreachable(where: str, failure: OSError | None) -> _Refusal:
    reason = failure.strerror if failure is not None and failure.strerror else "no answer"
    denied = failure is not None and failure.errno in (errno.EACCES, errno.EPERM)
    return _Refusal(
        "BROKER_UNREACHABLE",
        f"cannot reach the b24 broker at {where}: {reason}",
        "nothing was sent; "
        + (
            "the operator adds this user to the broker socket's group"
            if denied
            else "the operator starts b24-broker serve (B24_BROKER names its socket)"
        ),
        EXIT_CONFIG if denied else EXIT_TRANSIENT,
    )


def read_by_caller(argv: list[str]) -> tuple[list[str], int]:
    """``argv`` with a file-reading flag turned into ``-`` and the fd to send as stdin (the
    opened file, or 0). Only one flag may read a file, as only one stdin exists."""
    out, stdin = list(argv), 0
    index = 1
    while index < len(out):
        name, eq, value = out[index].partition("=")
        prefix = FILE_FLAGS.get(name)
        has_value = bool(eq) or index + 1 < len(out)
        if prefix is None or not has_value:
            index += 1
            continue
        value = value if eq else out[index + 1]
        if value != "-" and value.startswith(prefix):
            if stdin:
                raise _Refusal(
                    "USAGE",
                    "through the broker only one of --params @file and --batch-file FILE may "
                    "read a file",
                    "pass the other inline or on stdin",
                    EXIT_USAGE,
                )
            stdin = _open(name, value[len(prefix) :])
            out[index : index + (1 if eq else 2)] = [f"{name}=-"]
        index += 1
    return out, stdin


def _open(flag: str, path: str) -> int:
    try:
        return os.open(os.path.expanduser(path), os.O_RDONLY)
    except OSError as exc:
        raise _Refusal(
            "INPUT_UNREADABLE",
            f"{flag}: cannot read {path}: {exc.strerror}",
            f"check the path given to {flag}",
            EXIT_USAGE,
        ) from None


class Brokered(NamedTuple):
    """What a brokered call printed, and its exit code."""

    exit_code: int
    stdout: bytes
    stderr: bytes


def call(spec: str, argv: list[str], stdin: bytes = b"") -> Brokered:
    """Run ``b24 ARGV`` in the broker at ``spec`` (``unix:PATH``) from a program rather than a
    shell (the MCP server, the offline worker): its output is collected, not printed, and no
    signal handler is installed, so any thread may call it. ``argv`` starts with the program
    name; files it names are the broker's to refuse, so pass their content as ``stdin``."""
    with (
        tempfile.TemporaryFile() as given,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        given.write(stdin)
        given.seek(0)
        try:
            where = _socket_path(spec)
            served = _served(where, argv, (given.fileno(), out.fileno(), err.fileno()))
            code = served.run(relay_signals=False)
            if code is None:
                raise _not_run(where, served)
        except _Refusal as refusal:
            err.write(refusal.line.encode() + b"\n")
            code = refusal.exit_code
        out.seek(0)
        err.seek(0)
        return Brokered(code, out.read(), err.read())
