"""``batch``: up to 50 commands in one request, with references between them.

Follows settings/how-to-call-rest-api/batch.md and protocol.md section 5. Commands run in order
through the portal's dispatcher with the outer auth, so every command gets its own scope check,
faults and operating-time accounting, exactly as if it were called directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...encoding import parse_batch_command, php_map, php_truthy
from ..context import CallContext
from ..envelope import Page, unwrap
from ..errors import PortalError, argument_error
from ..portal import normalize_method
from ..registry import method

MAX_COMMANDS = 50

#: ``$result[name][k1]...``, ``$next[name]``, ``$total[name]``, ``$time[name][..]``,
#: ``$error[name][..]``: a kind, then one or more bracketed keys.
_REFERENCE = re.compile(r"\$(result|next|total|time|error)((?:\[[^\[\]]*\])+)")
_KEY = re.compile(r"\[([^\[\]]*)\]")
_MISSING = object()


@dataclass
class _Outcome:
    """The five per-command maps of a batch answer, filled in command order."""

    result: dict[str, Any] = field(default_factory=dict)
    result_error: dict[str, Any] = field(default_factory=dict)
    result_total: dict[str, Any] = field(default_factory=dict)
    result_next: dict[str, Any] = field(default_factory=dict)
    result_time: dict[str, Any] = field(default_factory=dict)

    def lookup(self, kind: str, keys: list[str]) -> Any:
        """Follow a reference; ``_MISSING`` when any step does not exist."""
        node: Any = getattr(self, "result" if kind == "result" else f"result_{kind}")
        for key in keys:
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return _MISSING
        return node

    def answer(self) -> dict[str, Any]:
        return {name: _php_array(value) for name, value in vars(self).items()}


def _php_array(values: dict[str, Any]) -> Any:
    """PHP's encoding of one per-command map: ``[]`` when empty, a list when the names are
    ``0..n-1``. Shallow on purpose: the command results inside keep the shapes their methods
    gave them (``encoding.phpify`` would also rewrite those)."""
    if not values:
        return []
    if list(values) == [str(i) for i in range(len(values))]:
        return list(values.values())
    return values


def _scalar_text(value: Any) -> str | None:
    """PHP's string cast of a scalar; None for arrays, which cannot sit inside a string."""
    if isinstance(value, bool):
        return "1" if value else ""
    if value is None:
        return ""
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def _resolve_text(text: str, done: _Outcome) -> Any:
    """A whole-string reference takes the value with its type; references inside longer text
    are replaced only by scalars; anything unresolved stays as literal text."""
    whole = _REFERENCE.fullmatch(text)
    if whole:
        value = done.lookup(whole.group(1), _KEY.findall(whole.group(2)))
        return text if value is _MISSING else value

    def substitute(match: re.Match[str]) -> str:
        value = done.lookup(match.group(1), _KEY.findall(match.group(2)))
        scalar = None if value is _MISSING else _scalar_text(value)
        return match.group(0) if scalar is None else scalar

    return _REFERENCE.sub(substitute, text) if "$" in text else text


def _resolve(value: Any, done: _Outcome) -> Any:
    if isinstance(value, str):
        return _resolve_text(value, done)
    if isinstance(value, dict):
        return {k: _resolve(v, done) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, done) for v in value]
    return value


def _run_one(ctx: CallContext, name: str, command: Any, done: _Outcome) -> None:
    """Run one command and file its outcome; raises PortalError for the caller to record."""
    if not isinstance(command, str):
        raise argument_error(f"command {name} must be a 'method?query' string", "cmd")
    method_name, params = parse_batch_command(command)
    method_name = normalize_method(method_name)
    if method_name == "batch":
        raise PortalError(
            "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage", 405
        )
    for credential in ("auth", "access_token"):
        params.pop(credential, None)
    params = _resolve(params, done)
    value, timing = ctx.portal.timed_dispatch(ctx, method_name, params)
    done.result[name] = unwrap(value)
    if isinstance(value, Page):
        done.result_total[name] = value.total
        if value.next is not None:
            done.result_next[name] = value.next
    done.result_time[name] = timing.as_dict()


@method("batch", scope="basic")
def batch(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    try:
        commands = php_map(params.get("cmd"))
    except TypeError:
        raise argument_error("cmd must be a map or list of commands", "cmd") from None
    halt = php_truthy(params.get("halt", 0))
    done = _Outcome()
    for index, (name, command) in enumerate(commands.items()):
        try:
            if index >= MAX_COMMANDS:
                raise PortalError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
            _run_one(ctx, name, command, done)
        except PortalError as error:
            if error.code == "OPERATION_TIME_LIMIT":
                ctx.portal.stats.bump("command_refusals")
            done.result_error[name] = {
                "error": error.code,
                "error_description": error.description,
            }
            if halt:
                break
    return done.answer()
