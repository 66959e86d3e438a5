"""Two-phase writes: ``--plan-only`` stores a call for review, ``--execute-plan ID`` runs it once.

A plan is only worth its review if what runs later is exactly what was reviewed, on the portal it
was reviewed for, soon after, at most once, and against the record as it was. So a plan file
holds the call (method, api, params), its risk, the portal, the packs in force, a params digest
and, for single-record updates and deletes, the record's fingerprint and a preview; it is signed
with an HMAC key kept (0600) next to the plans (a fleet on Redis shares one key, so a plan made
on one host runs on another) or, with ``B24_PLAN_KEY_FILE`` (the broker always sets it), in that
local file only, so an edited plan is refused. Execution checks, in order: the
id's shape, the signature, the portal, the TTL, that it was not run before, that the record is
unchanged, and then claims it with an exclusive create so that of racing executions, on any
number of hosts sharing the backend, exactly one runs. Every refusal is a ConflictError (exit 5)
saying why.

A plan also keeps how it was made (auth mode, env file, packs and allowlist, API version), so
its printed execute line runs as printed: execution chooses methods with the plan's packs (within
the operator's ceiling as it is then) and refuses other credentials than the plan's. A run that
was refused before anything was sent (policy, auth, validation, a portal answer proving the call
did not run) gives its claim back, so the plan stays usable.

A bulk plan (``--plan-only --batch-file``) holds every line of the file as one call list, with a
preview per line read in batches (300 updates: 6 reads). It runs as the batch file would (one
result line per line, idempotent as a whole); its records are not read again before it runs,
because that would double its requests: the per-line previews are its review.

The id comes from ``secrets.token_urlsafe``: knowing one plan's id tells nothing about another's.

The store shares its disk (or Redis) with the tokens and the audit chain, and an agent decides
how many plans it makes and how long their params are, so it has a budget (``B24_PLANS_MAX_MB``,
review8 M3): a plan that would pass it is refused (PLAN_STORE_FULL) and nothing is stored;
plans leave the store an hour after they expire. Two plans made at the same instant may both fit
the last room: the budget can be passed by one plan per racing caller, never without bound.
A caller may also ``review`` a plan before it is stored (the MCP server: can its approval
question be shown whole?) and refuse it there.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends import open_backend
from ..backends.base import Documents
from ..errors import ConflictError, CorruptStateError, NotFoundError, UsageError
from ..fingerprint import canonical_json, digest
from .diffing import Reader, fetch, preview, record_fingerprint, record_of, record_ref
from .keyfile import create_key, load_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Context", "Plan", "PlanStore", "ReadMany", "Review"]

#: Reads many calls at once (in batches); a record that does not exist comes back as None.
ReadMany = Callable[[Sequence[tuple[str, Mapping[str, Any]]]], list[Any]]

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_KEY_FILE = ".plan-signing-key.json"
_KEY_SCHEMA = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string", "minLength": 64}},
}
_PLAN_SCHEMA = {"type": "object", "required": ["plan", "signature"]}
#: Spent and expired plans are removed this long after they expire.
_KEEP_AFTER_EXPIRY_S = 3600.0
#: ``B24_PLANS_MAX_MB``'s default: the most the plan store holds (100 MiB).
DEFAULT_MAX_BYTES = 100 << 20
#: Checks a plan before it is stored; raises (a B24Error) to refuse it.
Review = Callable[["Plan"], object]


def _new_id() -> str:
    """32 random URL-safe characters behind ``p-``: the prefix keeps an id that would start
    with ``-`` from being read as a flag by ``--execute-plan ID``."""
    return "p-" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Context:
    """How a plan was made, so that it runs the same way."""

    api: str = "v2"
    packs: tuple[str, ...] = ("core",)
    method_allowlist: tuple[str, ...] = ()
    auth_mode: str = ""
    env_file: str | None = None
    unlisted: bool = False
    #: Who asked for it, when not this process's user (``CallRequest.origin``).
    made_by: dict[str, Any] | None = None


@dataclass
class Plan:
    """One stored call. ``target`` addresses the record it changes (None for other calls)."""

    id: str
    portal: str
    method: str
    api: str
    params: dict[str, Any]
    risk: str
    packs: list[str]
    params_digest: str
    created_at: float
    expires_at: float
    target: dict[str, Any] | None = None
    record_fingerprint: str | None = None
    preview: dict[str, Any] | None = None
    unlisted: bool = False
    auth_mode: str = ""
    env_file: str | None = None
    method_allowlist: list[str] = field(default_factory=list)
    #: A bulk plan: the batch-file line of each call in ``params["calls"]``, a preview each.
    lines: list[int] | None = None
    previews: list[dict[str, Any]] | None = None
    #: Who made it, when not this process's user (the broker's caller): that uid never approves it.
    made_by: dict[str, Any] | None = None

    def command(self, program: str) -> str:
        """The exact command that runs this plan: the env file it was made with, and the flags
        its execution still needs. Packs, allowlist and API version come from the plan."""
        flags = [f"--execute-plan {self.id}"]
        if self.env_file:
            flags.append(f"--env-file {shlex.quote(self.env_file)}")
        if self.risk == "destructive":
            flags.append("--confirm-destructive")
        return " ".join([program, *flags])

    def digest(self) -> str:
        """A digest of everything stored: what a human approved is exactly this plan."""
        return digest(asdict(self))

    def calls(self) -> list[tuple[str, dict[str, Any], int | None]]:
        """``(method, params, line)`` of each call the plan runs: one, or a bulk plan's lines."""
        if self.lines is None:
            return [(self.method, self.params, None)]
        return [
            (call["method"], call["params"], line)
            for call, line in zip(self.params["calls"], self.lines, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        """What ``--plan-only`` prints (the caller masks secrets)."""
        shown = {k: v for k, v in asdict(self).items() if k != "target"}
        for stamp in ("created_at", "expires_at"):
            shown[stamp] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(shown[stamp]))
        return shown


def _fingerprint_of(plan: Plan, read: Reader) -> str:
    ref = record_ref(plan.method, plan.params)
    assert ref is not None
    return record_fingerprint(fetch(ref, read))


class PlanStore:
    """Plans of one portal: one signed JSON file per plan plus a claim marker once it runs."""

    def __init__(
        self,
        plans: Documents,
        *,
        portal: str,
        ttl_s: float,
        key_file: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.plans = plans
        self.portal = portal
        self.ttl_s = ttl_s
        self.key_file = key_file
        self.max_bytes = max_bytes
        self._signing_key: bytes | None = None

    @classmethod
    def of(cls, settings: Settings) -> PlanStore:
        """The plans of the portal ``settings`` name."""
        plans = open_backend(settings).documents("plans", folder=settings.plan_dir)
        return cls(
            plans,
            portal=settings.portal_key,
            ttl_s=settings.plan_ttl_s,
            key_file=settings.plan_key_file,
            max_bytes=settings.plans_max_mb << 20,
        )

    def ids(self) -> list[str]:
        """Ids of the plans stored here (spent, expired and pending alike)."""
        stems = (
            name.removesuffix(".json") for name in self.plans.names() if name.endswith(".json")
        )
        return sorted(stem for stem in stems if _ID.match(stem))

    # --- signing -----------------------------------------------------------------------------
    def _key(self) -> bytes:
        """The HMAC key: the operator's local key file when one is set (the broker always sets
        one, so no caller that reaches the shared store can sign), else one made once in the
        store, shared by every host of a fleet; racing first uses agree on one key."""
        if self._signing_key is None:
            if self.key_file is not None:
                create_key(self.key_file)
                self._signing_key = load_key(self.key_file, setting="B24_PLAN_KEY_FILE")
            else:
                self.plans.create(_KEY_FILE, {"key": secrets.token_hex(32)})
                stored = self.plans.read(_KEY_FILE, schema=_KEY_SCHEMA)
                self._signing_key = bytes.fromhex(stored["key"])
        return self._signing_key

    def sign(self, body: Mapping[str, Any]) -> str:
        """HMAC of ``body`` under this folder's key (plans, and decisions on them)."""
        return hmac.new(self._key(), canonical_json(body).encode("utf-8"), "sha256").hexdigest()

    # --- paths -------------------------------------------------------------------------------
    @staticmethod
    def _name(plan_id: str) -> str:
        return f"{plan_id}.json"

    @staticmethod
    def _claim_name(plan_id: str) -> str:
        return f"{plan_id}.claimed"

    def kept_until(self, plan: Plan) -> float:
        """When a stored plan (and what is stored about it) may go: an hour past its expiry."""
        return plan.expires_at + _KEEP_AFTER_EXPIRY_S

    # --- phase 1 -----------------------------------------------------------------------------
    def create(
        self,
        *,
        method: str,
        api: str,
        params: Mapping[str, Any],
        risk: str,
        read: Reader,
        mask: Callable[[Any], Any],
        packs: list[str] | None = None,
        unlisted: bool = False,
        context: Context | None = None,
        review: Review | None = None,
    ) -> Plan:
        """Store a plan; for a single-record change, read the record (it must exist) first.

        ``mask`` is the redactor: params holding a secret are refused (masking them would change
        the call), and the stored preview is masked. ``context``: how it was made (``packs`` and
        ``unlisted`` are shorthands of it); ``unlisted`` means the call is outside the packs and
        allowlist, so running it needs the operator's consent to that again (B24_ALLOW_FLAGS).
        ``review`` checks the finished plan before it is stored (``_store``).
        """
        context = context or Context(api=api, packs=tuple(packs or ("core",)), unlisted=unlisted)
        plan = self._new(method, params, risk, mask, context)
        ref = record_ref(method, params)
        if ref is not None:
            record = fetch(ref, read)
            if record is None:
                raise NotFoundError(
                    f"{method}: the record {ref.get_params} does not exist ({ref.get_method})",
                    code="NOT_FOUND",
                    hint="check the id; list the entity to find valid ids",
                )
            plan.target = {ref.get_method: ref.get_params}
            plan.record_fingerprint = record_fingerprint(record)
            plan.preview = mask(preview(ref, record))
        return self._store(plan, review)

    def create_bulk(
        self,
        *,
        method: str,
        calls: Sequence[tuple[str, Mapping[str, Any], int]],
        risk: str,
        read_many: ReadMany,
        mask: Callable[[Any], Any],
        context: Context,
        review: Review | None = None,
    ) -> Plan:
        """Store one plan for every ``(method, params, line)`` of a batch file, with a preview
        per line; the records the lines change are read in batches and must all exist."""
        params = {"calls": [{"method": m, "params": dict(p)} for m, p, _ in calls]}
        plan = self._new(method, params, risk, mask, context)
        refs = [record_ref(m, p) for m, p, _ in calls]
        wanted = [(ref.get_method, ref.get_params) for ref in refs if ref is not None]
        found = iter(read_many(wanted))
        previews, missing = [], []
        for (call_method, call_params, line), ref in zip(calls, refs, strict=True):
            shown: dict[str, Any] = {"line": line, "method": call_method}
            if ref is None:
                shown.update(action="call", params=dict(call_params))
            else:
                record = record_of(next(found))
                if record is None:
                    missing.append(str(line))
                shown.update(preview(ref, record))
            previews.append(mask(shown))
        if missing:
            raise NotFoundError(
                f"the records of line(s) {', '.join(missing[:10])} do not exist",
                code="NOT_FOUND",
                hint="check the ids in those lines; list the entity to find valid ids",
            )
        plan.lines = [line for _, _, line in calls]
        plan.previews = previews
        return self._store(plan, review)

    def _new(
        self,
        method: str,
        params: Mapping[str, Any],
        risk: str,
        mask: Callable[[Any], Any],
        context: Context,
    ) -> Plan:
        if mask(dict(params)) != dict(params):
            raise UsageError(
                "these params hold a secret (a configured credential, or a field such as "
                "'password'); plan files never store secrets",
                code="PLAN_WITH_SECRET",
                hint="run the call directly with its confirmation flag instead of --plan-only",
            )
        now = time.time()
        return Plan(
            id=_new_id(),
            portal=self.portal,
            method=method,
            api=context.api,
            params=dict(params),
            risk=risk,
            packs=list(context.packs),
            params_digest=digest(dict(params)),
            created_at=now,
            expires_at=now + self.ttl_s,
            unlisted=context.unlisted,
            auth_mode=context.auth_mode,
            env_file=context.env_file,
            method_allowlist=list(context.method_allowlist),
            made_by=context.made_by,
        )

    def _store(self, plan: Plan, review: Review | None) -> Plan:
        if review is not None:
            review(plan)
        self.sweep(plan.created_at)
        body = asdict(plan)
        stored = {"plan": body, "signature": self.sign(body)}
        self._check_room(len(canonical_json(stored).encode("utf-8")))
        self.plans.create(self._name(plan.id), stored, expires_at=self.kept_until(plan))
        return plan

    def _check_room(self, size: int) -> None:
        """Refuse a plan of ``size`` bytes that the store's budget has no room for."""
        used = self.plans.usage()
        if used + size <= self.max_bytes:
            return
        raise UsageError(
            f"the plan store is full: its plans hold {used / 2**20:.1f} MB, this plan is "
            f"{size / 2**20:.1f} MB and the budget is {self.max_bytes / 2**20:g} MB "
            "(B24_PLANS_MAX_MB); nothing was stored",
            code="PLAN_STORE_FULL",
            hint="run or abandon the plans made already (each leaves the store an hour after "
            "it expires), or make a smaller plan",
        )

    # --- phase 2 -----------------------------------------------------------------------------
    def load(self, plan_id: str) -> Plan:
        """The plan, if it may still run: genuine, for this portal, unexpired and unspent."""
        if not _ID.match(plan_id or ""):
            raise UsageError(
                f"--execute-plan: {plan_id!r} is not a plan id",
                hint="pass the id --plan-only printed",
            )
        try:
            stored = self.plans.read(self._name(plan_id), schema=_PLAN_SCHEMA)
        except CorruptStateError as exc:
            raise exc.with_hint("make a new plan and review it again") from None
        if stored is None:
            raise _refuse(
                plan_id, "no such plan here (never made, or removed after expiry)", "PLAN_NOT_FOUND"
            )
        body = stored["plan"]
        if not hmac.compare_digest(str(stored["signature"]), self.sign(body)):
            raise _refuse(
                plan_id,
                "its file was changed after it was made (signature mismatch)",
                "PLAN_TAMPERED",
            )
        plan = Plan(**body)
        if plan.portal != self.portal:
            raise _refuse(
                plan_id, f"it was made for another portal ({plan.portal})", "PLAN_OTHER_PORTAL"
            )
        if time.time() > plan.expires_at:
            raise _refuse(plan_id, "it expired (B24_PLAN_TTL_SEC)", "PLAN_EXPIRED")
        if self.plans.exists(self._claim_name(plan_id)):
            raise _refuse(plan_id, "it was already executed; a plan runs once", "PLAN_SPENT")
        return plan

    def check_context(self, plan: Plan, *, auth_mode: str) -> None:
        """Refuse to run a plan with other credentials than it was made with."""
        if plan.auth_mode and plan.auth_mode != auth_mode:
            where = f" (from {plan.env_file})" if plan.env_file else ""
            raise ConflictError(
                f"plan {plan.id} refused: it was made with {plan.auth_mode} credentials"
                f"{where}, and these settings use {auth_mode}; nothing was sent",
                code="PLAN_OTHER_AUTH",
                hint="run the execute line --plan-only printed, as printed: it names the env "
                "file the plan was made with",
            )

    def check_fresh(self, plan: Plan, read: Reader) -> None:
        """Refuse when the record the plan reviewed changed (or vanished) since."""
        if plan.record_fingerprint is None:
            return
        if _fingerprint_of(plan, read) != plan.record_fingerprint:
            raise _refuse(
                plan.id,
                f"the record it changes ({plan.target}) was modified or deleted since the plan "
                "was made",
                "PLAN_STALE",
            )

    def claim(self, plan: Plan) -> None:
        """Take the plan's one run; of racing executions exactly one gets past here."""
        marker = {"claimed_at": time.time(), "pid": os.getpid()}
        if not self.plans.create(
            self._claim_name(plan.id), marker, expires_at=self.kept_until(plan)
        ):
            raise _refuse(plan.id, "it was already executed; a plan runs once", "PLAN_SPENT")

    def release(self, plan: Plan) -> None:
        """Give the claim back: the run was refused before anything reached the portal."""
        self.plans.delete(self._claim_name(plan.id))

    def sweep(self, now: float | None = None) -> int:
        """Remove plans (and claim markers) that expired over an hour ago; returns how many."""
        cutoff = (now or time.time()) - self.ttl_s - _KEEP_AFTER_EXPIRY_S

        def expired(name: str, modified: float, load: Any) -> bool:
            kinds = (".json", ".claimed", ".decision")
            return name.endswith(kinds) and name != _KEY_FILE and modified < cutoff

        return self.plans.sweep(expired)


def _refuse(plan_id: str, why: str, code: str, detail: str = "") -> ConflictError:
    extra = f" ({detail})" if detail else ""
    return ConflictError(
        f"plan {plan_id} refused: {why}{extra}",
        code=code,
        hint="make a new plan with --plan-only and review it again",
    )
