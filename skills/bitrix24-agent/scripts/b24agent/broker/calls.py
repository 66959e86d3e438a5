"""One brokered call: who connected, what it may name, and running it under the broker's settings.

The broker's worker takes on only the caller's stdin, stdout and stderr (passed as descriptors),
never its environment, folder or umask: settings, state and policy are the broker's own. It opens
no file a caller names, because it would open it with the operator's rights: ``--env-file``
(other than the broker's own), ``--audit-file``, ``--verify-audit FILE`` and ``--install-skill``
are refused, and ``--params @file`` / ``--batch-file FILE`` arrive as stdin (``b24`` reads
them with the caller's rights). The one thing taken from the caller's side besides argv and
stdio is its claim about itself (``B24_BROKER_CLAIM``: b24-mcp's client and tool), recorded in
the audit line as ``origin.claimed`` and trusted for nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import signal
import socket
import struct
import sys
import uuid
from typing import Any

from ..cli.client import build_parser
from ..cli.client import main as run_call
from ..cli.output import dump_line
from ..cli.warm import wire
from ..cli.warm.worker import RELAYED, serve, take_stdio
from ..errors import B24Error, PolicyError, UsageError
from ..guard.approval import WaitForDecision
from ..guard.audit import AuditEvent, write_outside_a_call
from ..rest.interrupts import interruption
from ..settings import load_settings

__all__ = ["peer", "peer_ids", "serve_brokered_call"]

#: A caller that connects must send its whole request within this many seconds: one deadline
#: for the request, not one per read, so a caller trickling a byte at a time cannot keep a
#: broker worker (and its slot of MAX_CALLS) forever.
REQUEST_TIMEOUT_S = 10


def peer_ids(conn: socket.socket) -> tuple[int, int, int]:
    """The kernel's word on who connected (SO_PEERCRED): pid, uid and gid."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def peer(conn: socket.socket) -> dict[str, Any]:
    """The kernel's word on who connected: pid, uid, gid and the user's name."""
    pid, uid, gid = peer_ids(conn)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    return {"uid": uid, "gid": gid, "pid": pid, "user": name, "via": "broker"}


def serve_brokered_call(conn: socket.socket) -> None:
    """Serve one call from ``conn``: the caller's stdio, the broker's everything else."""
    caller = peer(conn)
    conn.settimeout(REQUEST_TIMEOUT_S)
    signal.alarm(REQUEST_TIMEOUT_S)  # SIGALRM's default action ends this worker

    def run(request: wire.Request) -> int:
        signal.alarm(0)  # the request is in: the call itself may take as long as it takes
        refusal, method = _named_path(request.argv[1:])
        if refusal is not None:
            _audit_refusal(refusal, method, caller)
            sys.stderr.write(dump_line(refusal.to_json()) + "\n")
            return refusal.exit_code
        origin = {**caller, **_claimed(request.env.get("B24_BROKER_CLAIM"))}
        return run_call(request.argv[1:], approver=WaitForDecision(), origin=origin)

    serve(conn, _take_stdio_interruptible_once, run)


def _take_stdio_interruptible_once(request: wire.Request, fds: list[int]) -> None:
    """The caller's stdio, and its relayed signals as one interruption of the call.

    Whatever the caller relays (SIGINT, SIGTERM, SIGHUP), the call is interrupted the way
    Ctrl-C interrupts it, never ended on the spot: a worker that died after a write left would
    write no audit line, and the operator's audit would miss a write the portal ran. Only the
    first signal interrupts; later ones are ignored, so a burst cannot break into the audit line
    that the interruption itself writes.

    The request's ``ignored`` field is not read: a caller that ignores a signal simply does not
    relay it, and the operator's own SIGTERM (``systemctl stop``) interrupts every call."""
    take_stdio(request, fds)
    for sig in RELAYED:
        signal.signal(sig, _interrupt_once)


def _interrupt_once(signum: int, _frame: object) -> None:
    for sig in RELAYED:
        signal.signal(sig, signal.SIG_IGN)
    raise interruption(signum)  # exit 130, or 143/129 for SIGTERM/SIGHUP as in plain mode


def _claimed(text: str | None) -> dict[str, Any]:
    """What the caller says it is (b24-mcp: its MCP client and tool), for the audit line only:
    kept apart as ``claimed``, cut to short strings, and read by no policy (that goes by
    ``uid``, ``gid`` and ``user`` from the kernel)."""
    try:
        said = json.loads(text) if text else None
    except ValueError:
        said = None
    if not isinstance(said, dict):
        return {}
    kept = {str(k)[:40]: str(v)[:200] for k, v in list(said.items())[:8] if isinstance(v, str)}
    return {"claimed": kept} if kept else {}


def _own_env_file(named: str) -> bool:
    """Whether ``named`` is the broker's own env file (a plan's execute line names it)."""
    own = load_settings(require_credentials=False).env_file
    return own is not None and os.path.realpath(named) == os.path.realpath(own)


def _audit_refusal(refusal: B24Error, method: str, caller: dict[str, Any]) -> None:
    """The operator's audit gets a line for a call refused here too, so what a caller tried
    (say ``--audit-file`` to hide its calls) is on record; an unwritable log is named in the
    refusal's hint, since the call is refused either way."""
    settings = load_settings()
    event = AuditEvent(
        request_id=uuid.uuid4().hex,
        portal=settings.portal_key,
        method=method,
        risk="unknown",
        outcome="refused",
        duration_ms=0.0,
        error=refusal.code,
        exit_code=refusal.exit_code,
        origin=caller,
    )
    try:
        write_outside_a_call(settings, event)
    except OSError as exc:
        refusal.hint = f"{refusal.hint} (the audit log was not written: {exc.strerror or exc})"


def _named_path(argv: list[str]) -> tuple[B24Error | None, str]:
    """A refusal when ``argv`` names a file or folder the broker would open for the caller,
    and the method it names (``-`` when the flags cannot be read)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help is printed by the call itself
            args = build_parser(os.path.basename(sys.argv[0])).parse_args(argv)
    except UsageError as exc:
        return exc, "-"  # refused here: a call whose flags cannot be read is never run
    except SystemExit:
        return None, "-"  # --help or --version: printed by the call itself, opens nothing
    named = [
        flag
        for flag, given in (
            ("--env-file", args.env_file is not None and not _own_env_file(args.env_file)),
            ("--audit-file", args.audit_file is not None),
            ("--verify-audit FILE", bool(args.verify_audit)),
            ("--params @file", (args.params or "").startswith("@")),
            ("--batch-file FILE", args.batch_file not in (None, "-")),
            ("--install-skill DIR", args.install_skill is not None),
        )
        if given
    ]
    method = str(getattr(args, "method", None) or "-")
    if not named:
        return None, method
    return PolicyError(
        f"the broker opens no file a caller names: {', '.join(named)}",
        code="BROKER_PATH_REFUSED",
        hint="settings, audit log and state are the operator's (the broker's configuration); "
        "b24 itself reads --params @file and --batch-file FILE when the flags are spelled in "
        "full; --install-skill runs without B24_BROKER, with your own rights",
    ), method
