"""The broker's admin socket: where a person lists, shows, approves and denies plans.

Its group (``b24-broker serve --approvers``) is the operator's, and the agent is not in it, so
the agent holds no channel to approve its own writes; the broker also refuses an approval from
the uid that made the plan. One JSON line in, one JSON line out:

    {"op": "list"}                                       -> {"plans": [...]}
    {"op": "show", "plan": ID}                           -> {"plan": {...}, "digest": D, ...}
    {"op": "approve" | "deny", "plan": ID, "digest": D}  -> {"plan": ID, "verdict": ...}

``approve`` carries the digest ``show`` returned, so what is approved is what the person saw.
Each decision is a line of the broker's keyed audit chain: the approver's uid (SO_PEERCRED), the
plan, its digest, the verdict and the time.

The person's side (``ask``) checks who serves the socket before sending anything (SO_PEERCRED),
as ``b24`` does for a brokered call: it must run as ``B24_BROKER_USER`` (a name or uid) or, when
that is unset, as the person's own user. Another local user's socket, planted where the person
looks, would otherwise show a plan of its making and take "approve" or "deny" for an answer that
never reaches the broker.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..cli.warm.brokered import UNKNOWN_USER_HINT, broker_uid
from ..errors import B24Error, ConfigError, OutcomeUnknownError, TransientError, UsageError
from ..guard.approval import DecisionStore, audit_decision
from ..guard.plans import PlanStore
from ..settings import load_settings
from .calls import peer, peer_ids

__all__ = ["ask", "serve_admin"]

#: A person's request is a few hundred bytes; anything longer is not one.
MAX_LINE = 64 * 1024
#: How long a connected client may take to send its line (seconds).
READ_TIMEOUT_S = 30.0


def serve_admin(conn: socket.socket) -> None:
    """Answer one admin request on ``conn``."""
    who = peer(conn)
    conn.settimeout(READ_TIMEOUT_S)
    try:
        answer = _answer(_read_line(conn), who)
    except B24Error as exc:
        answer = {**exc.to_json(), "exit_code": exc.exit_code}
    conn.sendall((json.dumps(answer) + "\n").encode())


def _read_line(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        more = conn.recv(4096)
        if not more or len(data) > MAX_LINE:
            break
        data += more
    try:
        request = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        request = None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise UsageError("not a b24-broker admin request", code="USAGE")
    return request


def _answer(request: dict[str, Any], who: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings(require_credentials=False)
    plans = PlanStore.of(settings)
    op, plan_id = request["op"], str(request.get("plan") or "")
    if op == "list":
        return {"plans": _pending(plans)}
    if op == "show":
        plan = plans.load(plan_id)
        return {"plan": plan.summary(), "digest": plan.digest(), **_state(plans, plan_id)}
    if op in ("approve", "deny"):
        verdict = "approved" if op == "approve" else "denied"
        by = {key: who[key] for key in ("uid", "user")}
        plan = DecisionStore(plans).decide(plan_id, str(request.get("digest") or ""), verdict, by)
        audit_decision(settings, plan, verdict, {**who, "via": "broker-admin"})
        return {"plan": plan_id, "verdict": verdict, "by": by}
    raise UsageError(f"unknown admin op {op!r}", code="USAGE", hint="list, show, approve, deny")


def _state(plans: PlanStore, plan_id: str) -> dict[str, Any]:
    decision = DecisionStore(plans).decision(plan_id)
    if decision is None:
        return {"decision": "pending"}
    return {"decision": decision.verdict, "decided_by": decision.by}


def _pending(plans: PlanStore) -> list[dict[str, Any]]:
    """Plans that may still run (unexpired, unspent), with their decision so far."""
    listed = []
    for plan_id in plans.ids():
        try:
            plan = plans.load(plan_id)
        except B24Error:
            continue  # spent, expired or damaged: nothing to decide
        shown = {key: plan.summary()[key] for key in ("id", "method", "risk", "expires_at")}
        try:
            state = _state(plans, plan_id)
        except B24Error as exc:
            # One changed or damaged decision file must not hide every other plan from the
            # people who decide them: it is listed as what it is, and nothing runs on it.
            state = {"decision": "unreadable", "error": exc.code}
        listed.append({**shown, "made_by": plan.made_by, **state})
    return listed


def ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """Send one admin request to the broker at ``path``; its answer (an error answer raises)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(READ_TIMEOUT_S)
        try:
            conn.connect(path)
            _check_server(path, peer_ids(conn)[1])
            conn.sendall((json.dumps(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                more = conn.recv(65536)
                if not more:
                    break
                data += more
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the broker's admin socket {path}: {exc.strerror or exc}",
                code="BROKER_UNREACHABLE",
                hint="run this as a member of the broker's approvers group, with "
                "--admin-socket naming the socket b24-broker serve made",
            ) from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise _no_answer(path, request)
    if "error" in answer:
        raise _RemoteError(answer["error"], int(answer.get("exit_code", 1)))
    return answer


def _no_answer(path: str, request: dict[str, Any]) -> B24Error:
    """The socket closed without a whole answer: a decision sent may or may not be recorded."""
    if request["op"] in ("approve", "deny"):
        return OutcomeUnknownError(
            f"the broker's admin socket {path} gave no answer to {request['op']}: the decision "
            "may or may not be recorded",
            code="BROKER_NO_ANSWER",
            hint=f"b24-broker show {request.get('plan')} tells whether it was",
        )
    return TransientError(
        f"the broker's admin socket {path} gave no answer", code="BROKER_NO_ANSWER"
    )


def _check_server(path: str, uid: int) -> None:
    """Refuse a socket not served by the broker's user (see the module docstring)."""
    try:
        expected = broker_uid()
    except KeyError:
        raise ConfigError(
            f"B24_BROKER_USER names no user on this host: {os.environ.get('B24_BROKER_USER')!r}",
            code="CONFIG_INVALID",
            hint=UNKNOWN_USER_HINT,
        ) from None
    if uid == (os.getuid() if expected is None else expected):
        return
    named = "this user" if expected is None else f"B24_BROKER_USER={os.environ['B24_BROKER_USER']}"
    raise ConfigError(
        f"refused the broker's admin socket {path}: it is served by uid {uid}, not by {named}",
        code="BROKER_UNTRUSTED",
        hint="nothing was sent; " + UNKNOWN_USER_HINT,
    )


class _RemoteError(B24Error):
    """An error the broker answered with, shown as it came."""

    def __init__(self, error: dict[str, Any], exit_code: int) -> None:
        self.exit_code = exit_code  # type: ignore[misc]
        super().__init__(
            error.get("message", ""),
            code=error.get("code"),
            hint=error.get("hint", ""),
            retryable=bool(error.get("retryable")),
        )
