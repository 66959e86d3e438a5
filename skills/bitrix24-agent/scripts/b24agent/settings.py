"""All configuration in one frozen object, read from the environment, a ``.env`` file and flags.

This is the only module that reads ``os.environ`` for a call: every other module receives a
``Settings``, so tests and programs can build one explicitly and nothing changes behind their
back. (``cli/warm/wire.py`` reads B24_SERVER before anything is imported, to pick where the call
runs; the warm server reads B24_SERVER_IDLE_SEC; neither reaches a call's ``Settings``.)

Where values come from, later wins: one env file (python-dotenv) < the real environment <
``overrides``. The file is ``--env-file`` when given, else the operator's env file:
``B24_ENV_FILE``, else ``.env`` in the state root (``~/.local/state/bitrix24-agent/.env``):
settings live outside the skill folder, which runtimes copy and share. The working folder's
``.env`` is never read: any project or shared folder may hold one, written by someone else (a
cloned repository, another user in /tmp). Every env file is read through envfile.py: never
through a link, never another user's, never one others may write or, holding a secret, read.
Overrides keyed ``B24_*`` are read like environment variables; other keys name ``Settings``
fields and replace them after parsing (CLI flags such as ``rate_limiter``).

Variables (design.md "Configuration"; secrets marked *):
  B24_WEBHOOK_URL*        https://portal/rest/USER/CODE/ as Bitrix24 shows it (sets the next 3)
  B24_DOMAIN              portal host, may carry scheme and port; http only for loopback
  B24_WEBHOOK_USER_ID     webhook user id
  B24_WEBHOOK_CODE*       webhook secret code
  B24_AUTH_MODE           webhook | oauth (default: whichever credentials are given)
  B24_ACCESS_TOKEN*  B24_REFRESH_TOKEN*  B24_CLIENT_ID  B24_CLIENT_SECRET*   OAuth app
  B24_OAUTH_SERVER        token server (default https://oauth.bitrix.info)
  B24_APPLICATION_TOKEN*  the app's secret that proves an event came from the portal
  B24_PACKS  B24_METHOD_ALLOWLIST   comma lists; B24_REQUIRE_PLAN 0/1
  B24_READ_ONLY 0/1       the operator refuses every write and destructive call
  B24_ALLOW_FLAGS         widening flags the operator allows by name (WIDENING_FLAGS); none if unset
  B24_AUDIT_FILE  B24_AUDIT_PARAMS (digest|full)  B24_AUDIT_MAX_BYTES (rotate past this size)
  B24_PLAN_FILE (folder of plans)  B24_PLAN_TTL_SEC (at most a week)
  B24_PLANS_MAX_MB        the most the stored plans hold (default 100): past it, new plans are
                          refused (PLAN_STORE_FULL) until older ones run or expire
  B24_APPROVAL_WAIT_SEC   how long --execute-plan waits for a person's approval (broker; a day)
  B24_AUDIT_KEY_FILE      HMAC key of a keyed audit chain (the broker's; readable by it only)
  B24_PLAN_KEY_FILE       key that signs plans and approvals (the broker's; default: in the store)
  B24_IDEMPOTENCY_FILE (folder of records)  B24_IDEMPOTENCY_TTL_SEC  B24_AUTO_IDEMPOTENCY_WINDOW_SEC
  B24_RATE_LIMITER (file|memory|off)  B24_RATE_LIMITER_FILE  B24_RATE_LIMITER_RATE/_BURST
  B24_STATE_BACKEND*      file (default) | redis://:password@host:port/db (rediss:// for TLS):
                          where limiter, tokens, idempotency records, plans and worker leases live
  B24_WORKER_LEASE_SEC    seconds a fleet worker's lease outlives its last renewal (default 30)
  B24_STATE_DIR           root of per-portal state (default $XDG_STATE_HOME/bitrix24-agent)
  B24_ENV_FILE            the operator's env file (default .env in the state root)
  B24_CONNECT_TIMEOUT  B24_READ_TIMEOUT  B24_MAX_RETRIES  B24_RETRY_BASE_SEC  B24_RETRY_MAX_SEC
  B24_ANSWER_TIMEOUT      seconds from sending a request to its answer's last byte (default 300)
  B24_MAX_OPERATING_WAIT_SEC   how long a call may wait for a method's time budget to free up
  B24_MAX_ANSWER_MB       the most of one portal answer read, decoded (default 128); a larger
                          answer is refused as a server fault (a gzip bomb cannot fill memory)
  B24_APPROVAL            off|destructive|writes: plans above it run only once a human approves
                          (broker: b24-broker approve; MCP: elicitation); default writes there.
                          The plain CLI cannot enforce it: set, it refuses such writes.
  B24_BROKER_DRAINERS     the broker's: users, @groups, uids whose offline worker may drain the
                          event queue without per-call approval (guard/drain.py); unset: nobody
  B24_MCP_EXPORT_DIR      where b24-mcp's b24_export writes its JSONL files (default STATE/exports)
  B24_MCP_EXPORT_MAX_MB   the most that folder holds (default 1024): oldest files go first
  B24_MCP_TOKEN*          the bearer token b24-mcp --http requires from every HTTP client

The operator's ceiling (B24_READ_ONLY, B24_REQUIRE_PLAN, B24_PACKS, B24_METHOD_ALLOWLIST,
B24_ALLOW_FLAGS, B24_APPROVAL) is read from every source at once, not only from the file chosen:
the operator's env file, a ``--env-file`` file and the environment each bound it, and where
several set a variable the narrowest wins. So a command line that names another
env file, or an environment that sets ``B24_READ_ONLY=0``, changes which portal and credentials
are used but never lifts a ceiling the operator's file sets. Flags only narrow it too: the fields
a flag may replace (``packs``, ``method_allowlist``) are kept apart from the operator's
(``ceilings``, one per source); guard/policy.py runs a method only when all of them allow it.
``read_only`` and ``require_plan`` can be switched on by a flag, never off. Where the audit log
goes is the operator's as well: ``operator_audit_file`` is where the operator's own sources put
it, and a run that would log elsewhere needs ``audit-file`` in ``B24_ALLOW_FLAGS`` (cli/client.py).

Every problem is a ConfigError naming the variable; values of secret variables (and of the
address variables, which may embed a webhook code) are never echoed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from .envfile import CREDENTIAL_VARIABLES, read_env_file
from .errors import ConfigError

__all__ = [
    "APPROVAL_LEVELS",
    "SECRET_VARIABLES",
    "WIDENING_FLAGS",
    "Ceiling",
    "Settings",
    "load_settings",
]

T = TypeVar("T")

#: Variables whose values are never echoed in errors: the credentials, and the addresses, which
#: may hold a webhook code or a password.
SECRET_VARIABLES = frozenset(
    {*CREDENTIAL_VARIABLES, "B24_DOMAIN", "B24_OAUTH_SERVER", "B24_STATE_BACKEND"}
)

#: Flags that lift a guard instead of narrowing one; each works only where B24_ALLOW_FLAGS names it.
WIDENING_FLAGS = ("allow-unlisted", "no-audit", "no-mask-secrets", "no-idempotency", "audit-file")
#: ``B24_APPROVAL``: which writes wait for a human (guard/approval.py).
APPROVAL_LEVELS = ("off", "destructive", "writes")

DEFAULT_OAUTH_SERVER = "https://oauth.bitrix.info"
#: ``B24_ANSWER_TIMEOUT``'s ceiling (a day): a wait longer than the thread library can take
#: (about 9e9 s) killed the deadline keeper, and every later deadline of the process with it.
MAX_ANSWER_TIMEOUT_S = 86400.0
#: ``B24_PLAN_TTL_SEC``'s ceiling (a week): a plan is reviewed and run in one sitting, and a
#: far-off expiry overflowed the clock (file) or a Redis expiry (review7 L3).
MAX_PLAN_TTL_S = 7 * 86400
#: ``B24_APPROVAL_WAIT_SEC``'s ceiling (a day): a caller held longer has been forgotten.
MAX_APPROVAL_WAIT_S = 86400.0
#: Real webhook codes are 16+ characters and tokens 32+; a shorter value was cut when pasted.
MIN_SECRET_LEN = 8
_WEBHOOK_PATH = re.compile(r"^/rest/(\d+)/([^/\s]+)/?$")


@dataclass(frozen=True)
class Ceiling:
    """One source's ``B24_PACKS`` (None: it names none, every catalog pack) and
    ``B24_METHOD_ALLOWLIST``: a method runs only inside every source's ceiling."""

    packs: tuple[str, ...] | None = None
    allowlist: tuple[str, ...] = ()
    #: Which source set it, for refusals: " in env file PATH", " in the environment".
    where: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything the client side needs; secrets are excluded from ``repr``."""

    base_url: str
    auth_mode: str
    webhook_user_id: int | None = None
    webhook_code: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    oauth_server: str = DEFAULT_OAUTH_SERVER
    application_token: str | None = field(default=None, repr=False)
    packs: tuple[str, ...] = ("core",)
    method_allowlist: tuple[str, ...] = ()
    #: The operator's B24_PACKS and B24_METHOD_ALLOWLIST, one per source that sets them.
    ceilings: tuple[Ceiling, ...] = ()
    require_plan: bool = False
    read_only: bool = False
    allowed_flags: frozenset[str] = frozenset()
    #: The env file these settings were read from (absolute), so a plan can name it again.
    env_file: Path | None = None
    #: Where the operator's own settings put the audit log (a --env-file may not move it).
    operator_audit_file: Path = Path("audit.jsonl")
    state_dir: Path = Path(".")
    audit_file: Path = Path("audit.jsonl")
    audit_params: str = "digest"
    audit_max_bytes: int = 10 * 1024 * 1024
    plan_dir: Path = Path("plans")
    plan_ttl_s: int = 600
    #: The most the plan store holds; a plan that would pass it is refused (guard/plans.py).
    plans_max_mb: int = 100
    #: Writes a person must approve: off, destructive (deletes) or writes (every write); None
    #: when the operator did not say (``approval_level`` gives each mode's default).
    approval: str | None = None
    #: A ``--env-file`` file's B24_APPROVAL: it may raise the level, never lower it below the
    #: operator's or the mode's default (MCP's ``writes``).
    approval_floor: str = "off"
    #: How long ``--execute-plan`` waits for the human's decision before giving up (exit 3).
    approval_wait_s: float = 120.0
    #: Broker mode: who may drain the offline queue unattended (guard/drain.py).
    broker_drainers: tuple[str, ...] = ()
    audit_key_file: Path | None = None
    #: Local key file that signs plans and decisions; None keeps the key in the state store
    #: (shared by a fleet). The broker always sets one: a key in Redis is readable by callers.
    plan_key_file: Path | None = None
    idempotency_dir: Path = Path("idempotency")
    idempotency_ttl_s: int = 86400
    auto_idempotency_window_s: int = 600
    rate_limiter: str = "file"
    rate_limiter_file: Path = Path("ratelimit.json")
    rate: float = 2.0
    burst: int = 50
    connect_timeout: float = 10.0
    read_timeout: float = 65.0
    #: Seconds from sending a request to its answer's last byte (rest/deadline.py).
    answer_timeout: float = 300.0
    max_answer_mb: int = 128
    max_retries: int = 4
    retry_base_s: float = 0.5
    retry_max_s: float = 20.0
    max_operating_wait_s: float = 60.0
    mcp_export_dir: Path = Path("exports")
    #: The most the export folder holds; the oldest files go first (mcp/exports.py).
    mcp_export_max_mb: int = 1024
    mcp_token: str | None = field(default=None, repr=False)
    #: "file", or a redis:// / rediss:// URL (may hold a password, so never in repr).
    state_backend: str = field(default="file", repr=False)
    worker_lease_s: float = 30.0

    def approval_level(self, *, enforced: bool) -> str:
        """``B24_APPROVAL``, or when unset: writes where a person can approve (broker, MCP:
        ``enforced``), off in plain CLI mode, which has no channel the agent does not hold; never
        below ``approval_floor``."""
        level = self.approval or ("writes" if enforced else "off")
        return max(level, self.approval_floor, key=APPROVAL_LEVELS.index)

    @property
    def portal_key(self) -> str:
        """A folder-safe name for the portal (host and port; never credentials)."""
        return portal_key_of(self.base_url)

    def secrets(self) -> list[str]:
        """Every configured secret value, for Redactor."""
        values = (
            self.webhook_code,
            self.access_token,
            self.refresh_token,
            self.client_secret,
            self.application_token,
            self.mcp_token,
            _store_password(self.state_backend),
        )
        return [v for v in values if v]


def portal_key_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = (parts.hostname or "no-portal").lower()
    key = f"{host}_{parts.port}" if parts.port else host
    return re.sub(r"[^a-z0-9._-]", "_", key)


# --- reading raw values ---------------------------------------------------------------------


class _Env:
    """The merged variables plus typed readers that raise ConfigError naming the variable."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        self._values = values

    def raw(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    def fail(self, name: str, expected: str) -> ConfigError:
        value = self.raw(name)
        shown = "" if name in SECRET_VARIABLES or value is None else f", got {value[:60]!r}"
        return ConfigError(
            f"{name} is malformed: expected {expected}{shown}",
            code="CONFIG_INVALID",
            hint=f"fix {name} in the environment or .env",
        )

    def parsed(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except (ValueError, TypeError):
            raise self.fail(name, expected) from None

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        def parse(text: str) -> float:
            number = float(text)
            if not number >= minimum or number == float("inf"):
                raise ValueError(text)
            if maximum is not None and number > maximum:
                raise ValueError(text)
            return number

        wanted = f"a number >= {minimum:g}"
        if maximum is not None:
            wanted = f"a number from {minimum:g} to {maximum:g}"
        return self.parsed(name, default, parse, wanted)

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        def parse(text: str) -> int:
            number = int(text)
            if number < minimum or (maximum is not None and number > maximum):
                raise ValueError(text)
            return number

        wanted = f"an integer >= {minimum}"
        if maximum is not None:
            wanted = f"an integer from {minimum} to {maximum}"
        return self.parsed(name, default, parse, wanted)

    def flag(self, name: str, default: bool) -> bool:
        def parse(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)

        return self.parsed(name, default, parse, "1/0, true/false, yes/no or on/off")

    def allowed_flags(self, name: str) -> frozenset[str]:
        flags = self.names(name, ())
        if any(flag not in WIDENING_FLAGS for flag in flags):
            raise self.fail(name, "a comma list of " + ", ".join(WIDENING_FLAGS))
        return frozenset(flags)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(text: str) -> str:
            if text.lower() not in choices:
                raise ValueError(text)
            return text.lower()

        return self.parsed(name, default, parse, " or ".join(choices))

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        items = tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return tuple(dict.fromkeys(items))

    def secret(self, name: str) -> str | None:
        value = self.raw(name)
        if value is not None and (len(value) < MIN_SECRET_LEN or re.search(r"\s", value)):
            raise self.fail(name, f"at least {MIN_SECRET_LEN} characters without spaces")
        return value

    def path(self, name: str, default: Path, home: Path) -> Path:
        value = self.raw(name)
        if value is None:
            return default
        if value.startswith("~"):
            value = str(home) + value[1:]
        return Path(value)

    def optional_path(self, name: str, home: Path) -> Path | None:
        """The path ``name`` holds, or None when it is unset."""
        return self.path(name, Path(), home) if self.raw(name) else None


# --- addresses ------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP: where plain http (and a listening socket) is allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(env: _Env, name: str, text: str, *, allow_path: Callable[[str], bool]) -> str:
    """``scheme://host[:port]`` from an address that may lack a scheme; http only on loopback."""
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise env.fail(name, "a valid port number") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise env.fail(name, "a host name such as portal.bitrix24.com, optionally with scheme")
    if parts.query or parts.fragment or not allow_path(parts.path):
        raise env.fail(name, "an address without path, query or fragment")
    if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", parts.netloc.rsplit("@", 1)[-1]):
        raise env.fail(name, "a host name of letters, digits, dots and dashes")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{name} uses plain http for a non-loopback host",
            code="CONFIG_INSECURE",
            hint="use https://; plain http is allowed only for 127.0.0.1, ::1 and localhost",
        )
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}" + (f":{port}" if port else "")


def _webhook_url(env: _Env) -> tuple[str, int, str] | None:
    """(origin, user id, code) from B24_WEBHOOK_URL, or None when it is not set."""
    text = env.raw("B24_WEBHOOK_URL")
    if text is None:
        return None
    origin = _origin(env, "B24_WEBHOOK_URL", text, allow_path=lambda p: True)
    match = _WEBHOOK_PATH.match(urlsplit(text if "://" in text else "https://" + text).path)
    if not match:
        raise env.fail("B24_WEBHOOK_URL", "https://PORTAL/rest/USER_ID/CODE/")
    user_id, code = int(match.group(1)), match.group(2)
    if len(code) < MIN_SECRET_LEN:
        raise env.fail("B24_WEBHOOK_URL", f"a webhook code of at least {MIN_SECRET_LEN} chars")
    return origin, user_id, code


def _agree(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if a is not None and b is not None and a != b:
        raise ConfigError(
            f"{name_a} and {name_b} disagree",
            code="CONFIG_CONFLICT",
            hint=f"set only one of {name_a} and {name_b}, or make them match",
        )


def _missing(names: str, why: str) -> ConfigError:
    return ConfigError(
        f"{names} not set: {why}",
        code="CONFIG_MISSING",
        hint="set it in the environment or an env file: .env in the state folder (default "
        "~/.local/state/bitrix24-agent, mode 0600), B24_ENV_FILE or --env-file; see .env.example",
    )


# --- assembling -----------------------------------------------------------------------------


#: One source of variables alone, and where it is (" in env file PATH", " in the environment").
_Layer = tuple[str, "_Env"]


@dataclass(frozen=True)
class _Sources:
    """Where the variables came from: the file read for this run, and each source alone."""

    #: The env file read for this run < the real environment < ``B24_*`` overrides.
    merged: dict[str, str | None]
    #: The operator's env file < the real environment < overrides: whose audit log it is.
    operator: dict[str, str | None]
    #: The operator's sources on their own, with where they are: its env file, and the
    #: environment with the overrides.
    operator_layers: tuple[_Layer, ...]
    #: The file ``--env-file`` names, when it is not the operator's: it may only narrow.
    named_layer: _Layer | None
    #: The file ``merged`` was read from (absolute), None when there was none.
    env_file: Path | None


def _read(path: Path, named: str | None) -> dict[str, str | None] | None:
    """The variables of ``path``; None when it does not exist and no setting ``named`` it."""
    try:
        return read_env_file(path)
    except FileNotFoundError:
        if named is None:
            return None
        raise ConfigError(
            f"env file {path} not found", code="CONFIG_MISSING", hint=f"check {named}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read env file {path}: {type(exc).__name__}", code="CONFIG_INVALID"
        ) from None


def _sources(
    env_file: str | None, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]
) -> _Sources:
    """Read the operator's env file and the one ``--env-file`` names (see the module's rule)."""
    real: dict[str, str | None] = dict(os.environ if environ is None else environ)
    for key, value in overrides.items():
        if key.startswith("B24_"):
            real[key] = None if value is None else str(value)
    path, named = _operator_file(real)
    operator = _read(path, named)
    chosen = operator
    layers = ((f" in env file {path}", _Env(operator or {})), (" in the environment", _Env(real)))
    named: _Layer | None = None
    if env_file and not _same_file(Path(env_file), path):
        path, chosen = Path(env_file), _read(Path(env_file), "--env-file")
        named = (f" in env file {path}", _Env(chosen or {}))
    return _Sources(
        merged={**(chosen or {}), **real},
        operator={**(operator or {}), **real},
        operator_layers=layers,
        named_layer=named,
        env_file=path.resolve() if chosen is not None else None,
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _operator_file(real: Mapping[str, str | None]) -> tuple[Path, str | None]:
    """The operator's env file, and the setting that named it (a named file must exist):
    ``B24_ENV_FILE``, else ``.env`` in the state root. Never the working folder's ``.env``:
    any project or shared folder may hold one, written by someone else."""
    env = _Env(real)
    home = Path(env.raw("HOME") or Path.home())
    named = env.raw("B24_ENV_FILE")
    if named:
        return env.path("B24_ENV_FILE", Path(named), home), "B24_ENV_FILE"
    return _state_root(env, home) / ".env", None


def _credentials(env: _Env) -> dict[str, Any]:
    hook = _webhook_url(env)
    domain = env.raw("B24_DOMAIN")
    base = (
        _origin(env, "B24_DOMAIN", domain, allow_path=lambda p: p in ("", "/")) if domain else None
    )
    user_id = env.parsed("B24_WEBHOOK_USER_ID", None, int, "a positive integer user id")
    if user_id is not None and user_id <= 0:
        raise env.fail("B24_WEBHOOK_USER_ID", "a positive integer user id")
    code = env.secret("B24_WEBHOOK_CODE")
    if hook:
        _agree("B24_WEBHOOK_URL", hook[0], "B24_DOMAIN", base)
        _agree("B24_WEBHOOK_URL", hook[1], "B24_WEBHOOK_USER_ID", user_id)
        _agree("B24_WEBHOOK_URL", hook[2], "B24_WEBHOOK_CODE", code)
        base, user_id, code = hook
    return {
        "base_url": base or "",
        "webhook_user_id": user_id,
        "webhook_code": code,
        "access_token": env.secret("B24_ACCESS_TOKEN"),
        "refresh_token": env.secret("B24_REFRESH_TOKEN"),
        "client_id": env.raw("B24_CLIENT_ID"),
        "client_secret": env.secret("B24_CLIENT_SECRET"),
        "application_token": env.secret("B24_APPLICATION_TOKEN"),
    }


def _auth_mode(env: _Env, creds: Mapping[str, Any], require: bool) -> str:
    mode = env.raw("B24_AUTH_MODE")
    if mode is not None:
        mode = env.choice("B24_AUTH_MODE", "webhook", ("webhook", "oauth"))
    elif creds["webhook_code"]:
        mode = "webhook"
    elif creds["access_token"] or creds["refresh_token"] or creds["client_id"]:
        mode = "oauth"
    elif require:
        raise _missing(
            "B24_WEBHOOK_URL (or B24_DOMAIN + B24_WEBHOOK_USER_ID + B24_WEBHOOK_CODE)",
            "no portal credentials; for an OAuth app set B24_AUTH_MODE=oauth and its variables",
        )
    else:
        mode = "webhook"
    if not require:
        return mode
    if not creds["base_url"]:
        raise _missing("B24_DOMAIN", "the portal address is needed (or B24_WEBHOOK_URL)")
    if mode == "webhook":
        for name, key in (
            ("B24_WEBHOOK_USER_ID", "webhook_user_id"),
            ("B24_WEBHOOK_CODE", "webhook_code"),
        ):
            if not creds[key]:
                raise _missing(name, "B24_AUTH_MODE is webhook (or set B24_WEBHOOK_URL)")
    else:
        for name, key in (("B24_CLIENT_ID", "client_id"), ("B24_CLIENT_SECRET", "client_secret")):
            if not creds[key]:
                raise _missing(name, "B24_AUTH_MODE is oauth; the app's keys refresh tokens")
    return mode


def _store_password(url: str) -> str | None:
    """The password a Redis URL carries, in its address or as ``?password=`` (redis-py reads
    both); None for ``file``."""
    parts = urlsplit(url)
    return parts.password or next(iter(parse_qs(parts.query).get("password", [])), None)


def _state_backend(env: _Env) -> str:
    """``file``, or a Redis URL with a host, a numeric database (default 0) and a password; TLS
    (``rediss://``) unless the host is loopback, as for the portal's address.

    Every program refuses a Redis without a password (the broker did already): every local user
    reaches a loopback Redis and would read the OAuth pair and the plan signing key there, so a
    reviewed plan could be forged or replayed. There is no opt-in: an environment variable that
    allowed it could be set by the agent in its own command. The server itself is checked at
    the first call (backends/redis_store.py ``refuse_open``)."""
    value = env.raw("B24_STATE_BACKEND")
    if value is None or value.lower() == "file":
        return "file"
    expected = "file, or redis://:password@host:port/db (rediss:// for TLS)"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise env.fail("B24_STATE_BACKEND", expected) from None
    database = parts.path.strip("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or not (database == "" or database.isdigit())
        or parts.fragment
    ):
        raise env.fail("B24_STATE_BACKEND", expected)
    if parts.scheme == "redis" and not is_loopback_host(parts.hostname):
        # The OAuth pair, plans and the Redis password itself cross this link.
        raise ConfigError(
            "B24_STATE_BACKEND uses plain redis:// for a non-loopback host",
            code="CONFIG_INSECURE",
            hint="use rediss:// (TLS); plain redis:// is allowed only for 127.0.0.1, ::1 and "
            "localhost",
        )
    if not _store_password(value):
        raise ConfigError(
            "B24_STATE_BACKEND names a Redis without a password: every local user could read "
            "the OAuth tokens and the plan signing key in it",
            code="STATE_STORE_OPEN",
            hint="give Redis a password (requirepass, or an ACL user) and put it in "
            "B24_STATE_BACKEND: redis://:PASSWORD@host:port/db",
        )
    _redis_options(env, value, expected)
    return value


def _redis_options(env: _Env, value: str, expected: str) -> None:
    """Let redis-py read the URL's options now (``?socket_timeout=``, ``?ssl_cert_reqs=``...),
    so one it cannot read is CONFIG_INVALID here rather than a crash at the first call. Nothing
    connects. Without redis-py, backends/ reports DEPENDENCY_MISSING at the first call."""
    try:
        from redis.connection import ConnectionPool
        from redis.exceptions import RedisError
    except ImportError:
        return
    try:
        ConnectionPool.from_url(value).make_connection()
    except (ValueError, TypeError, RedisError):
        raise env.fail("B24_STATE_BACKEND", f"{expected}, with options redis-py reads") from None


def _audit_file(env: _Env, home: Path, portal: str) -> Path:
    return env.path("B24_AUDIT_FILE", _state_root(env, home) / portal / "audit.jsonl", home)


def _ceiling(operator: tuple[_Layer, ...], named: _Layer | None) -> dict[str, Any]:
    """The ceiling fields from every source at once: where several set a variable, the
    narrowest wins (a switch is on if any source turns it on; a method or a flag is allowed
    only where every list allows it; the strictest approval level). The file ``--env-file``
    names only narrows: where the operator's sources set no ceiling, the default one (every
    catalog pack, no unknown method; no widening flag; each mode's approval level) still holds
    under it."""
    every = (*operator, *([named] if named else []))
    mine = [_one_ceiling(where, layer) for where, layer in operator if _sets_ceiling(layer)]
    ceilings = list(mine or [Ceiling()])
    if named and _sets_ceiling(named[1]):
        ceilings.append(_one_ceiling(*named))
    consents = [
        layer.allowed_flags("B24_ALLOW_FLAGS")
        for _, layer in operator
        if _sets(layer, "B24_ALLOW_FLAGS")
    ]
    allowed = frozenset.intersection(*consents) if consents else frozenset()
    if named and _sets(named[1], "B24_ALLOW_FLAGS"):
        allowed &= named[1].allowed_flags("B24_ALLOW_FLAGS")
    levels = [_approval(layer) for _, layer in operator if _sets(layer, "B24_APPROVAL")]
    packs = (p for ceiling in ceilings for p in ceiling.packs or ())
    allowlist = (pattern for ceiling in ceilings for pattern in ceiling.allowlist)
    return {
        "ceilings": tuple(ceilings),
        "packs": tuple(dict.fromkeys(packs)) or ("core",),
        "method_allowlist": tuple(dict.fromkeys(allowlist)),
        "read_only": any([layer.flag("B24_READ_ONLY", False) for _, layer in every]),
        "require_plan": any([layer.flag("B24_REQUIRE_PLAN", False) for _, layer in every]),
        "allowed_flags": allowed,
        "approval": max(levels, key=APPROVAL_LEVELS.index) if levels else None,
        "approval_floor": _approval(named[1]) if named else "off",
    }


def _approval(layer: _Env) -> str:
    return layer.choice("B24_APPROVAL", "off", APPROVAL_LEVELS)


def _sets(layer: _Env, name: str) -> bool:
    return layer.raw(name) is not None


def _sets_ceiling(layer: _Env) -> bool:
    return _sets(layer, "B24_PACKS") or _sets(layer, "B24_METHOD_ALLOWLIST")


def _one_ceiling(where: str, layer: _Env) -> Ceiling:
    packs = layer.names("B24_PACKS", ()) if _sets(layer, "B24_PACKS") else None
    return Ceiling(packs, layer.names("B24_METHOD_ALLOWLIST", ()), where)


def _state_root(env: _Env, home: Path) -> Path:
    xdg = env.raw("XDG_STATE_HOME")
    default = (Path(xdg) if xdg else home / ".local" / "state") / "bitrix24-agent"
    return env.path("B24_STATE_DIR", default, home)


def load_settings(
    *,
    env_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    require_credentials: bool = True,
) -> Settings:
    """Build Settings from an env file < environment (``environ`` or os.environ) < ``overrides``,
    under the ceiling of every source (see the module's docstring).

    ``require_credentials=False`` lets commands that never call the portal (help, catalog
    look-ups, plan listing) run without a portal configured.
    """
    overrides = dict(overrides or {})
    sources = _sources(env_file, environ, overrides)
    env = _Env(sources.merged)
    home = Path(env.raw("HOME") or Path.home())
    creds = _credentials(env)
    mode = _auth_mode(env, creds, require_credentials)
    server = env.raw("B24_OAUTH_SERVER")
    oauth_server = (
        _origin(
            env,
            "B24_OAUTH_SERVER",
            server,
            allow_path=lambda p: p.rstrip("/") in ("", "/oauth/token", "/oauth"),
        )
        if server
        else DEFAULT_OAUTH_SERVER
    )
    portal = portal_key_of(creds["base_url"])
    state_dir = _state_root(env, home) / portal
    # The operator's paths are reckoned from the operator's HOME: a HOME in a ``--env-file``
    # (where the environment sets none) would move the operator's audit log along with the run's.
    operator = _Env(sources.operator)
    operator_home = Path(operator.raw("HOME") or Path.home())
    settings = Settings(
        **creds,
        **_ceiling(sources.operator_layers, sources.named_layer),
        auth_mode=mode,
        oauth_server=oauth_server,
        env_file=sources.env_file,
        operator_audit_file=_audit_file(operator, operator_home, portal),
        state_dir=state_dir,
        audit_file=_audit_file(env, home, portal),
        audit_params=env.choice("B24_AUDIT_PARAMS", "digest", ("digest", "full")),
        audit_max_bytes=env.integer("B24_AUDIT_MAX_BYTES", 10 * 1024 * 1024, minimum=4096),
        plan_dir=env.path("B24_PLAN_FILE", state_dir / "plans", home),
        plan_ttl_s=env.integer("B24_PLAN_TTL_SEC", 600, minimum=1, maximum=MAX_PLAN_TTL_S),
        plans_max_mb=env.integer("B24_PLANS_MAX_MB", 100, minimum=1),
        approval_wait_s=env.number("B24_APPROVAL_WAIT_SEC", 120.0, maximum=MAX_APPROVAL_WAIT_S),
        broker_drainers=env.names("B24_BROKER_DRAINERS", ()),
        audit_key_file=env.optional_path("B24_AUDIT_KEY_FILE", home),
        plan_key_file=env.optional_path("B24_PLAN_KEY_FILE", home),
        idempotency_dir=env.path("B24_IDEMPOTENCY_FILE", state_dir / "idempotency", home),
        idempotency_ttl_s=env.integer("B24_IDEMPOTENCY_TTL_SEC", 86400, minimum=1),
        auto_idempotency_window_s=env.integer("B24_AUTO_IDEMPOTENCY_WINDOW_SEC", 600),
        rate_limiter=env.choice("B24_RATE_LIMITER", "file", ("file", "memory", "off")),
        rate_limiter_file=env.path("B24_RATE_LIMITER_FILE", state_dir / "ratelimit.json", home),
        rate=env.number("B24_RATE_LIMITER_RATE", 2.0, minimum=0.01),
        burst=env.integer("B24_RATE_LIMITER_BURST", 50, minimum=1),
        connect_timeout=env.number("B24_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        read_timeout=env.number("B24_READ_TIMEOUT", 65.0, minimum=0.1),
        answer_timeout=env.number(
            "B24_ANSWER_TIMEOUT", 300.0, minimum=0.1, maximum=MAX_ANSWER_TIMEOUT_S
        ),
        max_answer_mb=env.integer("B24_MAX_ANSWER_MB", 128, minimum=1),
        max_retries=env.integer("B24_MAX_RETRIES", 4),
        retry_base_s=env.number("B24_RETRY_BASE_SEC", 0.5),
        retry_max_s=env.number("B24_RETRY_MAX_SEC", 20.0),
        max_operating_wait_s=env.number("B24_MAX_OPERATING_WAIT_SEC", 60.0),
        state_backend=_state_backend(env),
        worker_lease_s=env.number("B24_WORKER_LEASE_SEC", 30.0, minimum=1.0),
        mcp_export_dir=env.path("B24_MCP_EXPORT_DIR", state_dir / "exports", home),
        mcp_export_max_mb=env.integer("B24_MCP_EXPORT_MAX_MB", 1024, minimum=1),
        mcp_token=env.secret("B24_MCP_TOKEN"),
    )
    return _apply_field_overrides(settings, overrides)


#: Settings a flag may switch on but never off: the operator's word stands.
_ONLY_NARROWING = ("read_only", "require_plan")


def _apply_field_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    fields = {f.name for f in dataclasses.fields(Settings)}
    changes = {k: v for k, v in overrides.items() if not k.startswith("B24_") and v is not None}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(
            f"unknown setting override(s): {', '.join(unknown)}",
            code="CONFIG_INVALID",
            hint=f"known settings: {', '.join(sorted(fields))}",
        )
    for name, value in changes.items():
        current = getattr(settings, name)
        if name in _ONLY_NARROWING:
            changes[name] = bool(current or value)
        if isinstance(current, Path) and isinstance(value, str):
            changes[name] = Path(value)
        elif isinstance(current, tuple) and isinstance(value, (list, tuple)):
            changes[name] = tuple(value)
    return dataclasses.replace(settings, **changes) if changes else settings
