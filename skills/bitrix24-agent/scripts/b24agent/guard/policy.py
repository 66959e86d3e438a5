"""What may run: packs and the method allowlist, confirmation gates by risk, require-plan.

An agent's mistake must be stopped before a request leaves the machine, and the refusal must tell
it exactly which flag would allow the call, so a deliberate call costs one retry and an accidental
one costs nothing. Rules, all fail-closed:

- A method runs only when it is in an enabled pack (``B24_PACKS`` / ``--packs``, default core) or
  matches a ``--method-allowlist`` pattern (fnmatch); ``--allow-unlisted`` lifts this for one call.
  Unknown methods count as writes (catalog.risk_of).
- ``write`` needs ``--confirm-write``; ``destructive`` needs ``--confirm-destructive``. Each class
  has its own flag: consenting to deletes does not silently consent to other writes.
- ``batch`` (and a batch file) is as risky as its riskiest command, and every command is checked
  against packs and allowlist on its own; a batch nested in a batch is refused.
- With ``B24_REQUIRE_PLAN=1`` / ``--require-plan`` a write runs only from a plan.

Stages: ``call`` (a direct call: all rules), ``plan`` (``--plan-only``: packs/allowlist only, a
plan is inert), ``execute`` (``--execute-plan``: the plan stands for ``--confirm-write`` and for
the plan requirement; a destructive plan still needs ``--confirm-destructive`` at execution,
because deleting is the one step a reviewer must take twice on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .. import catalog
from ..encoding import parse_batch_command, php_map
from ..errors import ConfigError, PolicyError, ValidationError

__all__ = [
    "Assessment",
    "Command",
    "Gates",
    "Risk",
    "Stage",
    "assess",
    "authorize",
    "check_packs",
    "commands_of",
    "listed",
]

Risk = Literal["read", "write", "destructive"]
Stage = Literal["call", "plan", "execute"]
_NO_PACKS = "none"


@dataclass(frozen=True)
class Command:
    """One method a request would run: the call itself, or one command inside a batch."""

    label: str
    method: str
    risk: Risk


@dataclass(frozen=True)
class Assessment:
    """Every method a request would run; its risk is the strongest of them."""

    commands: tuple[Command, ...]

    @property
    def risk(self) -> Risk:
        return catalog.riskiest(c.risk for c in self.commands)

    @property
    def writes(self) -> bool:
        return self.risk != "read"

    def riskiest(self) -> Command:
        """The first command of the strongest class, named in refusals."""
        return next(c for c in self.commands if c.risk == self.risk)


def _batch_commands(params: Mapping[str, Any], label: str) -> list[Command]:
    try:
        commands = php_map(params.get("cmd"))
    except TypeError:
        commands = {}
    if not commands:
        raise ValidationError(
            f"{label}: batch needs a non-empty cmd map",
            hint="""e.g. {"cmd": {"me": "user.current", "lead": "crm.lead.get?id=1"}}""",
        )
    found = []
    for name, command in commands.items():
        if not isinstance(command, str) or not command.strip():
            raise ValidationError(
                f"{label}: cmd[{name}] must be a string 'method?query'",
                hint="e.g. crm.lead.get?id=1",
            )
        method = catalog.normalize(parse_batch_command(command)[0])
        if method == "batch":
            raise ValidationError(
                f"{label}: cmd[{name}] is a batch inside a batch, which the portal refuses",
                hint="put its commands into the outer batch",
            )
        found.append(
            Command(f"{label} command '{name}' ({method})", method, catalog.risk_of(method))
        )
    return found


def commands_of(
    method: str, params: Mapping[str, Any] | None, label: str | None = None
) -> list[Command]:
    """The methods one call would run: itself, or each command when it is a ``batch``."""
    name = catalog.normalize(method)
    label = label or name
    if name == "batch":
        return [Command(label, name, "read"), *_batch_commands(params or {}, label)]
    return [Command(label, name, catalog.risk_of(name))]


def assess(calls: Iterable[tuple[str, Mapping[str, Any] | None, str | None]]) -> Assessment:
    """Assess ``(method, params, label)`` calls: one for a call, one per line of a batch file."""
    found: list[Command] = []
    for method, params, label in calls:
        found.extend(commands_of(method, params, label))
    return Assessment(tuple(found))


@dataclass(frozen=True)
class Gates:
    """The rules in force for one invocation (settings plus this run's flags)."""

    packs: tuple[str, ...] = ("core",)
    method_allowlist: tuple[str, ...] = ()
    allow_unlisted: bool = False
    confirm_write: bool = False
    confirm_destructive: bool = False
    require_plan: bool = False

    @property
    def enabled_packs(self) -> tuple[str, ...]:
        return tuple(p.strip().lower() for p in self.packs if p.strip().lower() != _NO_PACKS)


def check_packs(packs: Iterable[str]) -> None:
    """Refuse pack names the catalog does not know, listing the ones it does (exit 4)."""
    known = catalog.pack_names()
    unknown = sorted({p.strip().lower() for p in packs} - known - {_NO_PACKS})
    if unknown:
        raise ConfigError(
            f"unknown pack(s) in B24_PACKS/--packs: {', '.join(unknown)}",
            hint=f"available: {', '.join(sorted(known))}, or 'none' to use only the allowlist",
        )


def _check_listed(command: Command, gates: Gates) -> None:
    if gates.allow_unlisted or catalog.match_allowlist(command.method, gates.method_allowlist):
        return
    pack = catalog.pack_of(command.method)
    enabled = gates.enabled_packs
    if pack is not None and pack in enabled:
        return
    once = "or run it once with --allow-unlisted"
    just = f"--method-allowlist '{command.method}'"
    if pack is None:
        raise PolicyError(
            f"{command.label} is not in the method catalog (unknown methods count as writes)",
            code="METHOD_UNLISTED",
            hint=f"check the name in the official docs (b24 --explain {command.method}), then "
            f"allow it with {just} {once}",
        )
    packs = ",".join((*enabled, pack))
    raise PolicyError(
        f"{command.label} is in pack '{pack}', which is not enabled "
        f"(enabled: {', '.join(enabled) or 'none'})",
        code="METHOD_NOT_ALLOWED",
        hint=f"enable the pack with --packs {packs} (or B24_PACKS), allow just this method "
        f"with {just}, {once}",
    )


def _check_confirmation(assessment: Assessment, gates: Gates, stage: Stage) -> None:
    risk = assessment.risk
    if risk == "read" or stage == "plan":
        return
    top = assessment.riskiest()
    if stage == "call" and gates.require_plan:
        raise PolicyError(
            f"{top.label} is a {risk} call and a plan is required (B24_REQUIRE_PLAN)",
            code="PLAN_REQUIRED",
            hint="run the same command with --plan-only, review it, then --execute-plan ID",
        )
    if risk == "destructive" and not gates.confirm_destructive:
        flag = "--confirm-destructive"
    elif risk == "write" and stage == "call" and not gates.confirm_write:
        flag = "--confirm-write"
    else:
        return
    what = "deletes or ends data" if risk == "destructive" else "changes data"
    after = " with --execute-plan" if stage == "execute" else ""
    raise PolicyError(
        f"{top.label} {what} ({risk}); add {flag} to run it",
        code="CONFIRMATION_REQUIRED",
        hint=f"check the params, then repeat the command{after} with {flag}"
        + ("" if stage == "execute" else ", or review it first with --plan-only"),
    )


def listed(assessment: Assessment, gates: Gates) -> bool:
    """Whether every command is in an enabled pack or the allowlist (``--allow-unlisted`` aside)."""
    try:
        for command in assessment.commands:
            _check_listed(command, replace(gates, allow_unlisted=False))
    except PolicyError:
        return False
    return True


def authorize(assessment: Assessment, gates: Gates, stage: Stage = "call") -> None:
    """Raise PolicyError (exit 3) naming the flag that would allow it, unless it may run."""
    check_packs(gates.packs)
    for command in assessment.commands:
        _check_listed(command, gates)
    _check_confirmation(assessment, gates, stage)
