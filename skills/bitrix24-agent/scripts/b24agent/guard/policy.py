"""What may run: the operator's ceiling, packs and the method allowlist, confirmation gates by
risk, read-only, require-plan, and the flags that would widen a guard.

The agent types the command; the operator decides what it may do. So an agent's mistake must be
stopped before a request leaves the machine, the refusal must tell it what would allow the call
when a narrowing flag can (``--confirm-write``, ``--packs`` within the ceiling), and what the
operator would change when only the operator can; it never names a flag that lifts a guard.
Rules, all fail-closed:

- The operator's ceiling (``B24_PACKS`` and ``B24_METHOD_ALLOWLIST`` in the environment or env
  file) bounds every call: a method runs only inside it, whatever ``--packs`` or
  ``--method-allowlist`` say; those flags choose within it (an intersection). With no
  ``B24_PACKS`` the ceiling holds every catalog pack; an unknown method is inside it only when
  the operator's allowlist names it.
- Within the ceiling a method runs only when it is in an enabled pack (``--packs``, else
  ``B24_PACKS``, else core) or matches an allowlist pattern (fnmatch). ``--allow-unlisted``
  lifts both for one call, and only where the operator allowed that flag (``B24_ALLOW_FLAGS``).
- ``write`` needs ``--confirm-write``; ``destructive`` needs ``--confirm-destructive``. Each class
  has its own flag: consenting to deletes does not silently consent to other writes.
- ``B24_READ_ONLY=1`` (or the narrowing ``--read-only``) refuses every write and destructive call,
  at every stage, plans included.
- ``batch`` (and a batch file) is as risky as its riskiest command, and every command is checked
  against packs and allowlist on its own; a batch nested in a batch is refused.
- With ``B24_REQUIRE_PLAN=1`` / ``--require-plan`` a write runs only from a plan.
- Widening flags (settings.WIDENING_FLAGS) run only when ``B24_ALLOW_FLAGS`` names them.

Stages: ``call`` (a direct call: all rules), ``plan`` (``--plan-only``: packs/allowlist and
read-only, a plan is inert), ``execute`` (``--execute-plan``: the plan stands for
``--confirm-write`` and for the plan requirement; a destructive plan still needs
``--confirm-destructive`` at execution, because deleting is the one step a reviewer must take
twice on purpose).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .. import catalog
from ..encoding import parse_batch_command, php_map
from ..errors import ConfigError, PolicyError, ValidationError
from ..settings import Ceiling

__all__ = [
    "Assessment",
    "Command",
    "Gates",
    "Risk",
    "Stage",
    "assess",
    "authorize",
    "check_packs",
    "check_reads_only",
    "check_widening",
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
    read_only: bool = False
    #: The operator's packs and allowlist, one per source that sets them: a method must be
    #: inside every one (none: every catalog pack, no unknown method).
    ceilings: tuple[Ceiling, ...] = ()

    @property
    def enabled_packs(self) -> tuple[str, ...]:
        limits = [_pack_names(c.packs) for c in self.ceilings if c.packs is not None]
        return tuple(p for p in _pack_names(self.packs) if all(p in limit for limit in limits))


def _pack_names(packs: Iterable[str]) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in packs if p.strip().lower() != _NO_PACKS)


def check_packs(packs: Iterable[str]) -> None:
    """Refuse pack names the catalog does not know, listing the ones it does (exit 4)."""
    known = catalog.pack_names()
    unknown = sorted({p.strip().lower() for p in packs} - known - {_NO_PACKS})
    if unknown:
        raise ConfigError(
            f"unknown pack(s) in B24_PACKS/--packs: {', '.join(unknown)}",
            hint=f"available: {', '.join(sorted(known))}, or 'none' to use only the allowlist",
        )


def check_widening(requested: Iterable[str], allowed: Collection[str], *, source: str = "") -> None:
    """Refuse a flag that would lift a guard unless the operator named it in B24_ALLOW_FLAGS
    (``source``: what asks for it when not the flag itself, e.g. an env file's setting)."""
    refused = [flag for flag in requested if flag not in allowed]
    if refused:
        raise PolicyError(
            f"--{refused[0]}{source} would lift a guard the operator set, and the operator has not "
            "allowed it (B24_ALLOW_FLAGS)",
            code="FLAG_NOT_ALLOWED",
            hint="run the command without it; only the operator can allow it, by name, in "
            "B24_ALLOW_FLAGS",
        )


def _inside(command: Command, pack: str | None, ceiling: Ceiling) -> bool:
    if catalog.match_allowlist(command.method, ceiling.allowlist):
        return True
    if pack is None:
        return False
    return ceiling.packs is None or pack in _pack_names(ceiling.packs)


def _outside_ceiling(command: Command, pack: str | None, ceiling: Ceiling) -> PolicyError:
    if pack is None:
        return PolicyError(
            f"{command.label} is not in the method catalog (unknown methods count as writes), "
            f"and the operator's B24_METHOD_ALLOWLIST{ceiling.where} does not name it",
            code="METHOD_UNLISTED",
            hint=f"check the name in the official docs (b24 --explain {command.method}); the "
            "operator allows it by adding it to B24_METHOD_ALLOWLIST",
        )
    packs = ",".join(_pack_names(ceiling.packs or ())) or "none"
    return PolicyError(
        f"{command.label} is in pack '{pack}', outside what the operator allows "
        f"(B24_PACKS={packs}{ceiling.where}); a command-line flag narrows that, never widens it",
        code="OUTSIDE_OPERATOR_CEILING",
        hint=f"the operator adds '{pack}' to B24_PACKS or the method to B24_METHOD_ALLOWLIST",
    )


def _check_listed(command: Command, gates: Gates) -> None:
    if gates.allow_unlisted:
        return
    pack = catalog.pack_of(command.method)
    # No source set a ceiling: every catalog pack, and no unknown method (fail closed).
    for ceiling in gates.ceilings or (Ceiling(),):
        if not _inside(command, pack, ceiling):
            raise _outside_ceiling(command, pack, ceiling)
    if catalog.match_allowlist(command.method, gates.method_allowlist):
        return
    enabled = gates.enabled_packs
    if pack is not None and pack in enabled:
        return
    just = f"allow just this method with --method-allowlist '{command.method}'"
    if pack is None:
        raise PolicyError(
            f"{command.label} is not in the method catalog nor in this run's allowlist",
            code="METHOD_UNLISTED",
            hint=f"{just} (the operator's B24_METHOD_ALLOWLIST admits it)",
        )
    raise PolicyError(
        f"{command.label} is in pack '{pack}', which is not enabled "
        f"(enabled: {', '.join(enabled) or 'none'})",
        code="METHOD_NOT_ALLOWED",
        hint=f"enable the pack with --packs {','.join((*enabled, pack))} (or B24_PACKS), or {just}",
    )


def _check_read_only(assessment: Assessment, gates: Gates) -> None:
    if gates.read_only and assessment.writes:
        top = assessment.riskiest()
        raise PolicyError(
            f"{top.label} is a {assessment.risk} call and this run is read-only "
            "(B24_READ_ONLY=1 or --read-only)",
            code="READ_ONLY",
            hint="reads still work; writes need the operator to unset B24_READ_ONLY and a run "
            "without --read-only",
        )


def check_reads_only(assessment: Assessment) -> None:
    """Refuse anything that would change data where only reads run (MCP ``b24_call`` and
    ``b24_export``): a write there goes through a plan, which a human may be asked to approve."""
    if assessment.writes:
        top = assessment.riskiest()
        raise PolicyError(
            f"{top.label} is a {assessment.risk} call; this tool runs reads only",
            code="READS_ONLY",
            hint="plan it with b24_plan, then run the plan with b24_execute_plan (a "
            "human may be asked to approve it)",
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
    """Raise PolicyError (exit 3) saying what would allow it, unless it may run."""
    check_packs((*gates.packs, *(p for c in gates.ceilings for p in c.packs or ())))
    for command in assessment.commands:
        _check_listed(command, gates)
    _check_read_only(assessment, gates)
    _check_confirmation(assessment, gates, stage)
