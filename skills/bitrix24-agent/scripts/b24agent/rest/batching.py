"""Build ``batch`` requests and read their answers (protocol.md section 5).

Commands go out as ``method?query`` strings in PHP bracket syntax (encoding.py), named or
numbered. The answer's five per-command maps may each arrive as ``{}``, ``[]`` or a list (PHP
encodes a map keyed ``0..n-1`` as a list), so every one is read through ``php_map``. Each
command's error is classified on its own, with its own method's read/write nature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..encoding import build_batch_command, parse_batch_command, php_map
from ..errors import ApiError, B24Error, UsageError, error_from_portal, server_fault
from .results import BatchResult, CallResult
from .schemas import validate_params

__all__ = [
    "MAX_COMMANDS",
    "BatchPlan",
    "check_command",
    "check_method_name",
    "command_methods",
    "halted_error",
    "parse_batch",
    "plan_batch",
]

MAX_COMMANDS = 50
_METHOD = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")

Commands = Mapping[str, tuple[str, Mapping[str, Any]]] | Sequence[tuple[str, Mapping[str, Any]]]


def check_method_name(method: Any) -> str:
    """The method name, or UsageError: it goes into the URL path, so only ``a.b_c`` shapes."""
    name = method.strip() if isinstance(method, str) else ""
    name = name[:-5] if name.lower().endswith(".json") else name
    if not _METHOD.match(name):
        raise UsageError(
            "method name must be dot-separated letters, digits and underscores "
            "(e.g. crm.lead.list)",
            code="INVALID_METHOD",
        )
    return name


def check_command(method: Any, params: Any, *, params_checked: bool = False) -> str:
    """Validate one batch command; return its clean method name (UsageError/ValidationError).

    ``params_checked``: the caller already ran ``validate_params`` on these params (the CLI
    checks a whole batch file before sending any of it), so the schema check is not repeated.
    """
    name = check_method_name(method)
    if name.lower() == "batch":
        raise UsageError(
            "batch cannot contain batch (ERROR_BATCH_METHOD_NOT_ALLOWED)", code="INVALID_BATCH"
        )
    if not params_checked:
        validate_params(name, params)
    return name


@dataclass(frozen=True)
class BatchPlan:
    """The ``cmd`` to send plus, per command name, the method it calls."""

    cmd: dict[str, str] | list[str]
    names: list[str]
    methods: dict[str, str]


def plan_batch(commands: Commands, *, params_checked: bool = False) -> BatchPlan:
    """Validate and encode up to 50 commands (a name -> (method, params) map, or a sequence);
    ``params_checked`` as in ``check_command``."""
    if isinstance(commands, Mapping):
        items = [(str(name), *command) for name, command in commands.items()]
    else:
        items = [(str(index), *command) for index, command in enumerate(commands)]
    if not items:
        raise UsageError("a batch needs at least one command", code="INVALID_BATCH")
    if len(items) > MAX_COMMANDS:
        raise UsageError(
            f"a batch holds at most {MAX_COMMANDS} commands, got {len(items)}",
            code="INVALID_BATCH",
            hint="send the calls through call_many, which splits them into batches of 50",
        )
    methods: dict[str, str] = {}
    strings: dict[str, str] = {}
    for name, method, params in items:
        try:
            methods[name] = check_command(method, params, params_checked=params_checked)
        except UsageError as exc:
            exc.message = f"batch command {name}: {exc.message}"
            exc.args = (exc.message,)
            raise
        strings[name] = build_batch_command(methods[name], params)
    cmd: dict[str, str] | list[str] = (
        strings if isinstance(commands, Mapping) else list(strings.values())
    )
    return BatchPlan(cmd, [name for name, _, _ in items], methods)


def command_methods(cmd: Any) -> dict[str, str]:
    """Name -> method of a raw ``cmd`` (as a caller passed it to ``call("batch", ...)``)."""
    try:
        commands = php_map(cmd)
    except TypeError:
        return {}
    return {
        name: parse_batch_command(text)[0]
        for name, text in commands.items()
        if isinstance(text, str)
    }


def halted_error() -> ApiError:
    return ApiError(
        "not run: an earlier command in the batch failed and halt was set",
        code="BATCH_HALTED",
        hint="fix the failed command and send the rest again",
        retryable=True,
    )


def _command_error(raw: Any, *, write: bool) -> B24Error:
    if isinstance(raw, Mapping):
        code, description = raw.get("error"), raw.get("error_description")
    else:
        code, description = "", raw
    return error_from_portal(
        str(code or ""),
        description if isinstance(description, str) else "",
        None,
        write=write,
    )


def _first_failed(names: Sequence[str], failed: Mapping[str, Any]) -> int | None:
    """Where a halted batch stopped: the first command, in ``cmd`` order, with an error. The
    portal runs commands in that order (batch.md), so only those after it provably did not run."""
    return next((index for index, name in enumerate(names) if name in failed), None)


def parse_batch(
    call: CallResult,
    plan: BatchPlan,
    *,
    halt: bool,
    is_write: Callable[[str], bool],
) -> BatchResult:
    """Split a batch answer into per-command results and classified errors."""
    any_write = any(is_write(m) for m in plan.methods.values())
    try:
        if not isinstance(call.result, Mapping):
            raise TypeError("result is not a map")
        maps = {
            key: php_map(call.result.get(key))
            for key in ("result", "result_error", "result_total", "result_next", "result_time")
        }
    except TypeError:
        raise server_fault(
            "MALFORMED_RESPONSE",
            "batch: the portal's answer does not have the batch shape",
            call.http_status,
            write=any_write,
        ) from None
    results: dict[str, Any] = {}
    errors: dict[str, B24Error] = {}
    halted_at = _first_failed(plan.names, maps["result_error"]) if halt else None
    for index, name in enumerate(plan.names):
        write = is_write(plan.methods[name])
        if name in maps["result_error"]:
            errors[name] = _command_error(maps["result_error"][name], write=write)
        elif name in maps["result"]:
            results[name] = maps["result"][name]
        elif halted_at is not None and index > halted_at:
            errors[name] = halted_error()
        else:  # no halt, or before the failure: the portal ran it (in order), outcome unknown
            errors[name] = server_fault(
                "MALFORMED_RESPONSE",
                f"batch: command {name} ({plan.methods[name]}) is missing from the answer",
                call.http_status,
                write=write,
            )
    return BatchResult(
        results=results,
        errors=errors,
        totals={k: v for k, v in maps["result_total"].items() if isinstance(v, int)},
        nexts={k: v for k, v in maps["result_next"].items() if isinstance(v, int)},
        times={k: v for k, v in maps["result_time"].items() if isinstance(v, Mapping)},
        call=call,
    )
