"""Every way a call can fail, as one exception tree with the CLI exit code on each class.

    B24Error                          base: code, message, hint, retryable, http_status
    ├── ApiError .................. 1  the portal refused the call (it did not do it)
    │   ├── NotFoundError                 the record is missing ("" / NOT_FOUND / ENTITYNOTFOUND)
    │   ├── AccessDeniedError             the user lacks rights, or the plan lacks the feature
    │   └── MethodNotFoundError           no such method (or a v3-only method on the v2 path)
    ├── UsageError ................ 2  the caller asked for something malformed
    │   └── ValidationError               a parameter fails its schema (names the field)
    ├── PolicyError ............... 3  blocked by our own guards (says which flag allows it)
    ├── ConfigError ............... 4  a setting is missing or malformed (names the variable)
    │   └── CorruptStateError             STATE_CORRUPT: a state file moved aside (path only)
    ├── AuthError ................. 4  credentials the portal rejects and a refresh cannot fix
    │   └── TokenExpiredError             expired_token: refreshed once, then the call repeated
    ├── ConflictError ............. 5  idempotency key in use or reused; stale or spent plan
    ├── TransientError ............ 6  gave up after retries; the call did not happen, retry later
    │   ├── StoreUnavailableError         the shared state store (Redis) is out of reach or
    │   │                                 refuses for now: not resent by the portal retry loop
    │   ├── RateLimitError                QUERY_LIMIT_EXCEEDED (request bucket full)
    │   └── OperationTimeLimitError       OPERATION_TIME_LIMIT (method time budget used up)
    ├── OutcomeUnknownError ....... 7  a write was sent and may or may not have happened
    └── Interrupted ............. 130  stopped by the user (143 SIGTERM, 129 SIGHUP)

Classification goes by the portal's ``error`` string, never by HTTP status alone: a 200 can carry
an error body and the same status means different things for different codes. Whether a failure
is "did not happen" or "may have happened" is decided once, in ``_classify``, from the code's
kind and whether the call was a write; the retry loop (retrying.py) only reads ``retryable``.
Messages and hints are built from codes and the portal's descriptions, never from URLs or
credentials; the client masks every configured secret once more before an error leaves it.
The portal's own text is cut to ``PORTAL_TEXT_MAX`` characters (its error code to
``PORTAL_CODE_MAX``), with a marker saying how much was cut: a broken or hostile portal (or a
proxy) can send megabytes there, which would pass the MCP result cap, make the CLI's one error
line megabytes long and give a portal unbounded room to talk to the agent.
"""

from __future__ import annotations

#: ``typing`` (with the ``re`` it imports) and ``collections`` are 8 ms of ``b24``'s warm-start
#: caller, which imports this module through the package; at run time only ``error_from_v3``
#: needs ``Mapping``, and imports it there.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, ClassVar

__all__ = [
    "PORTAL_CODE_MAX",
    "PORTAL_TEXT_MAX",
    "AccessDeniedError",
    "ApiError",
    "AuthError",
    "B24Error",
    "ConfigError",
    "ConflictError",
    "CorruptStateError",
    "Interrupted",
    "MethodNotFoundError",
    "NotFoundError",
    "OperationTimeLimitError",
    "OutcomeUnknownError",
    "PolicyError",
    "RateLimitError",
    "TokenExpiredError",
    "TransientError",
    "UsageError",
    "ValidationError",
    "clip",
    "error_from_line",
    "error_from_portal",
    "error_from_v3",
    "local_failure",
    "not_sent",
    "server_fault",
    "unexpected_after_sending",
]


class B24Error(Exception):
    """Base of every error this package raises on purpose (see the tree above)."""

    exit_code: ClassVar[int] = 1
    default_retryable: ClassVar[bool] = False
    #: True on the transport's word about a request it handled (the portal's answer, or proof
    #: that it never left): such an error already says whether a write ran. Any other error
    #: raised once a write has left (a state store, the audit log) cannot, so the pipeline
    #: reports it as outcome unknown.
    verdict: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        hint: str = "",
        retryable: bool | None = None,
        http_status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
        self.retryable = self.default_retryable if retryable is None else retryable
        self.http_status = http_status
        #: Non-secret facts for callers (operating_reset_at, validation list, argument...).
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        prefix = f"{self.code}: " if self.code else ""
        return prefix + self.message

    def to_json(self) -> dict[str, Any]:
        """The one-line error object the CLI prints on stderr."""
        return {
            "error": {
                "code": self.code or type(self).__name__,
                "message": self.message,
                "hint": self.hint,
                "retryable": self.retryable,
            }
        }


class ApiError(B24Error):
    exit_code = 1


class NotFoundError(ApiError):
    pass


class AccessDeniedError(ApiError):
    pass


class MethodNotFoundError(ApiError):
    pass


class UsageError(B24Error):
    exit_code = 2


class ValidationError(UsageError):
    pass


class PolicyError(B24Error):
    exit_code = 3


class ConfigError(B24Error):
    exit_code = 4


class CorruptStateError(ConfigError):
    """A state file exists but cannot be trusted; it has been moved aside to ``moved_to``.

    The one way corrupt state is reported, whoever finds it (token store, limiter, plans,
    idempotency records, audit head, worker checkpoint): code ``STATE_CORRUPT``, exit 4, and a
    message that names the path and never quotes the content, because a damaged token store or
    plan may hold secrets. ``reason`` (which may quote the content) stays on the object for
    callers that only need to know *that* it broke, and is never printed; ``at`` (a line
    number, never content) may say where.
    """

    def __init__(
        self, path: Any, moved_to: Any, reason: str, *, at: str = "", hint: str = ""
    ) -> None:
        self.path = path
        self.moved_to = moved_to
        self.reason = reason
        self.at = at
        where = f" at {at}" if at else ""
        moved = f"; moved aside to {moved_to}" if moved_to else ""
        super().__init__(
            f"state file {path} is corrupt{where}{moved}",
            code="STATE_CORRUPT",
            hint=hint
            or "restore the file from the moved copy, or leave it moved to start that state afresh",
        )

    def with_hint(self, hint: str) -> CorruptStateError:
        """The same error with the hint of the state it belongs to (what starting afresh means)."""
        return CorruptStateError(self.path, self.moved_to, self.reason, at=self.at, hint=hint)


class AuthError(B24Error):
    exit_code = 4


class TokenExpiredError(AuthError):
    pass


class ConflictError(B24Error):
    exit_code = 5


class TransientError(B24Error):
    exit_code = 6
    default_retryable = True


class StoreUnavailableError(TransientError):
    """The shared state store did not answer or refuses for now. Retryable later, but it is not
    a portal that might answer the next attempt: the retry loop does not resend the call (five
    attempts of a silent Redis are five socket time-outs)."""


class RateLimitError(TransientError):
    pass


class OperationTimeLimitError(TransientError):
    pass


class OutcomeUnknownError(B24Error):
    exit_code = 7


class Interrupted(B24Error):
    exit_code = 130


def error_from_line(exit_code: int, stderr: str) -> B24Error:
    """The error a ``b24`` run reported (its exit code and its one-line JSON on stderr), as the
    class of that exit code: how a program that ran ``b24`` elsewhere (through the broker)
    gets the error back with its meaning (retry, outcome unknown, refused) intact."""
    import json

    kinds: dict[int, type[B24Error]] = {
        cls.exit_code: cls
        for cls in (ApiError, UsageError, PolicyError, ConfigError, ConflictError)
    }
    kinds.update({6: TransientError, 7: OutcomeUnknownError, 130: Interrupted})
    kinds.update({129: Interrupted, 143: Interrupted})  # SIGHUP, SIGTERM (128 + the signal)
    kind = kinds.get(exit_code, B24Error)
    for line in reversed(stderr.splitlines()):
        try:
            error = json.loads(line)["error"]
            message, code = str(error["message"]), str(error.get("code") or "")
        except (ValueError, KeyError, TypeError):
            continue
        found = kind(
            message,
            code=code,
            hint=str(error.get("hint") or ""),
            retryable=bool(error.get("retryable")),
        )
        found.details["exit_code"] = exit_code
        return found
    return kind(f"b24 ended with exit {exit_code}", code="BROKER_CALL_FAILED")


# --- the portal's text ----------------------------------------------------------------------

#: Characters of a portal's error description (v3: message and validation) an error keeps.
PORTAL_TEXT_MAX = 2_000
#: Characters of a portal's error code an error keeps (documented codes are under 60).
PORTAL_CODE_MAX = 100
#: Validation items of a v3 error named in the message; the rest are counted.
_VALIDATION_SHOWN = 20


def clip(text: str, most: int = PORTAL_TEXT_MAX) -> str:
    """``text`` cut to ``most`` characters, saying how many more there were."""
    if len(text) <= most:
        return text
    return f"{text[:most]}... ({len(text) - most} more characters cut)"


# --- classification -------------------------------------------------------------------------

# Kinds of failure. "not_run" and "fault" are the two that depend on whether the call writes.
_NOT_RUN = "not_run"  # refused before the method ran: safe to send again, writes included
_FAULT = "fault"  # the server broke mid-way: reads may be resent, writes are outcome unknown
_EXPIRED = "expired"
_AUTH = "auth"
_DENIED = "denied"
_NOT_FOUND = "not_found"
_NO_METHOD = "no_method"
_CONFLICT = "conflict"
_USAGE = "usage"
_API = "api"

_V3 = "BITRIX_REST_V3_EXCEPTION_"

#: code -> (kind, hint). Codes from protocol.md section 3, error-codes.md and rest-v3.md.
_CODES: dict[str, tuple[str, str]] = {
    "QUERY_LIMIT_EXCEEDED": (
        _NOT_RUN,
        "the portal's request bucket is full; slow down (the shared limiter normally prevents "
        "this: check B24_RATE_LIMITER and other tools using the same portal)",
    ),
    "OPERATION_TIME_LIMIT": (
        _NOT_RUN,
        "this method used its 10-minute time budget; call it again after operating_reset_at, "
        "with smaller pages or fewer fields",
    ),
    "INTERNAL_SERVER_ERROR": (_FAULT, "the portal failed inside the method"),
    "ERROR_UNEXPECTED_ANSWER": (_FAULT, "the portal failed inside the method"),
    "expired_token": (_EXPIRED, "the access token expired; it is refreshed automatically"),
    "invalid_token": (
        _AUTH,
        "the portal does not know this access token; set B24_ACCESS_TOKEN and "
        "B24_REFRESH_TOKEN from a fresh app authorisation",
    ),
    "NO_AUTH_FOUND": (
        _AUTH,
        "no credentials the portal recognises; check B24_WEBHOOK_URL or the OAuth tokens",
    ),
    "INVALID_CREDENTIALS": (
        _AUTH,
        "the webhook code or user is wrong, or the user lost the rights it needs; check "
        "B24_WEBHOOK_USER_ID / B24_WEBHOOK_CODE",
    ),
    "insufficient_scope": (
        _AUTH,
        "the webhook or app lacks the scope this method needs; add it in the webhook/app "
        "settings (the method catalog names the scope each method needs)",
    ),
    "WRONG_AUTH_TYPE": (_AUTH, "this method needs OAuth app context; set B24_AUTH_MODE=oauth"),
    "user_access_error": (
        _AUTH,
        "the administrator restricted this app to other users; ask for access",
    ),
    "invalid_grant": (
        _AUTH,
        "the token server rejected the refresh token (already used or expired); authorise the "
        "app again and set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN",
    ),
    "invalid_client": (
        _AUTH,
        "the token server rejected the app; check B24_CLIENT_ID / B24_CLIENT_SECRET and that "
        "the app is installed on the portal",
    ),
    "invalid_request": (_AUTH, "the token server refused the request as malformed"),
    "PAYMENT_REQUIRED": (_AUTH, "the app's trial or paid period is over; renew it"),
    "INVALID_REQUEST": (_AUTH, "the portal requires HTTPS; use an https:// B24_DOMAIN"),
    "ACCESS_DENIED": (
        _DENIED,
        "the user behind the webhook/app lacks the rights (event.offline.* needs an admin)",
    ),
    "WRONG_LICENSE": (_DENIED, "the portal's plan does not include this feature"),
    "ACCESS_ERROR": (
        _DENIED,
        "the chat refuses this user: not a member, or the chat forbids the action "
        "(im.dialog.get to see the chat and its restrictions)",
    ),
    "NOT_FOUND": (_NOT_FOUND, "no record with this id; list the entity to find valid ids"),
    "ERROR_METHOD_NOT_FOUND": (
        _NO_METHOD,
        "no such method here; check the name in the method catalog, or whether it is REST "
        "3.0 only (call it through the v3 API) or needs a module the portal lacks",
    ),
    "ERROR_ARGUMENT": (_API, "a parameter is missing or has the wrong type"),
    "ERROR_CORE": (_API, "the method refused the parameters; read the message"),
    "ERROR_BATCH_LENGTH_EXCEEDED": (_USAGE, "a batch holds at most 50 commands; split it"),
    "ERROR_BATCH_METHOD_NOT_ALLOWED": (_USAGE, "this method cannot run inside batch; call it"),
    "OVERLOAD_LIMIT": (
        _API,
        "the portal's REST API is blocked by hand for overload; contact Bitrix24 support",
    ),
    "PORTAL_DELETED": (_API, "the portal is closed or deleted"),
    _V3 + "IDEMPOTENCYKEYREUSEDEXCEPTION": (
        _CONFLICT,
        "this Idempotency-Key was used with a different body; use a new key, reuse a key only "
        "to repeat the same call",
    ),
    _V3 + "INVALIDIDEMPOTENCYKEYEXCEPTION": (
        _USAGE,
        "an Idempotency-Key is 1 to 255 printable ASCII characters",
    ),
    _V3 + "ENTITYNOTFOUNDEXCEPTION": (_NOT_FOUND, "no object with this id"),
    _V3 + "ACCESSDENIEDEXCEPTION": (_DENIED, "the user lacks rights for this object"),
    _V3 + "INSUFFICIENTSCOPEEXCEPTION": (
        _AUTH,
        "the webhook or app lacks the scope this method needs; add it in its settings",
    ),
    _V3 + "VALIDATION_REQUESTVALIDATIONEXCEPTION": (
        _API,
        "a field is missing or has the wrong type; see the field named in the message",
    ),
    _V3 + "INVALIDJSONEXCEPTION": (_USAGE, "REST 3.0 takes a JSON object body"),
    _V3 + "UNKNOWNDTOPROPERTYEXCEPTION": (_API, "a field in filter/select does not exist"),
    _V3 + "UNKNOWNFILTEROPERATOREXCEPTION": (_API, "a filter uses an unknown operator"),
}

_SIMPLE: dict[str, type[B24Error]] = {
    _EXPIRED: TokenExpiredError,
    _AUTH: AuthError,
    _DENIED: AccessDeniedError,
    _NOT_FOUND: NotFoundError,
    _NO_METHOD: MethodNotFoundError,
    _CONFLICT: ConflictError,
    _USAGE: UsageError,
    _API: ApiError,
}

_NOT_RUN_CLASSES: dict[str, type[TransientError]] = {
    "QUERY_LIMIT_EXCEEDED": RateLimitError,
    "OPERATION_TIME_LIMIT": OperationTimeLimitError,
}

_UNKNOWN_WRITE_HINT = (
    "the write may or may not have happened; check the portal before repeating it (repeat "
    "with the same idempotency key to reconcile)"
)


def _classify(kind: str, code: str, write: bool) -> type[B24Error]:
    """The single place deciding what a failure means for a read and for a write."""
    if kind == _NOT_RUN:
        return _NOT_RUN_CLASSES.get(code, TransientError)
    if kind == _FAULT:
        return OutcomeUnknownError if write else TransientError
    return _SIMPLE[kind]


def _kind_of(code: str, description: str, http_status: int | None) -> tuple[str, str]:
    known = _CODES.get(code)
    if known:
        return known
    if code == "" and "not found" in description.lower():
        # Old CRM methods answer a missing record with an empty code (protocol.md section 3).
        return _NOT_FOUND, "no record with this id; list the entity to find valid ids"
    if http_status is not None and http_status >= 500:
        # An unknown code with a server status: do not assume the method did not run.
        return _FAULT, "the portal answered with a server error"
    return _API, ""


def _build(
    kind: str,
    code: str,
    message: str,
    hint: str,
    http_status: int | None,
    *,
    write: bool,
    details: Mapping[str, Any] | None = None,
) -> B24Error:
    cls = _classify(kind, code, write)
    if cls is OutcomeUnknownError:
        hint = f"{hint}; {_UNKNOWN_WRITE_HINT}" if hint else _UNKNOWN_WRITE_HINT
    return cls(message, code=code, hint=hint, http_status=http_status, details=details)


def error_from_portal(
    code: str,
    description: str,
    http_status: int | None,
    *,
    write: bool,
    details: Mapping[str, Any] | None = None,
) -> B24Error:
    """Turn a v2 error answer (``{"error", "error_description"}``) into the right exception."""
    kind, hint = _kind_of(code, description, http_status)
    code = clip(code, PORTAL_CODE_MAX)
    message = clip(description.strip()) or code or "the portal reported an error without a code"
    return _build(kind, code, message, hint, http_status, write=write, details=details)


def error_from_v3(body: Mapping[str, Any], http_status: int | None, *, write: bool) -> B24Error:
    """Turn a REST 3.0 error answer (``{"error": {"code", "message", "validation"}}``) into one.

    A v2-shaped body on a v3 address (auth and limit errors come from the shared core) is read
    the v2 way, so callers can hand any error body here.
    """
    from collections.abc import Mapping

    error = body.get("error")
    if not isinstance(error, Mapping):
        description = body.get("error_description")
        return error_from_portal(
            str(error or ""),
            description if isinstance(description, str) else "",
            http_status,
            write=write,
        )
    code = str(error.get("code") or "")
    message = str(error.get("message") or "")
    validation = error.get("validation")
    details: dict[str, Any] = {}
    if isinstance(validation, list) and validation:
        details["validation"] = validation
        items = [item for item in validation if isinstance(item, Mapping)]
        fields = "; ".join(
            f"{item.get('field', '?')}: {item.get('message', '')}".strip()
            for item in items[:_VALIDATION_SHOWN]
        )
        if len(items) > _VALIDATION_SHOWN:
            fields += f"; ... ({len(items) - _VALIDATION_SHOWN} more)"
        if fields:
            message = f"{message} ({fields})" if message else fields
    return error_from_portal(code, message, http_status, write=write, details=details)


def server_fault(
    code: str, message: str, http_status: int | None, *, write: bool, hint: str = ""
) -> B24Error:
    """A failure where the server may have run the call: a timeout after sending, a dropped
    connection, a malformed answer. Transient for reads; outcome unknown for writes."""
    return _build(_FAULT, code, message, hint, http_status, write=write)


def not_sent(code: str, message: str, *, hint: str = "") -> TransientError:
    """A failure before the request left this machine (connection refused, DNS, TLS): the
    portal provably did not run it, so it is safe to resend, writes included."""
    return TransientError(message, code=code, hint=hint)


def unexpected_after_sending(exc: BaseException) -> OutcomeUnknownError:
    """A failure that is not ours to name (a bug, or a local file that cannot be written, such
    as a full disk) after a write request left: it may have run."""
    if isinstance(exc, OSError):
        return OutcomeUnknownError(
            f"{_file_trouble(exc)}, after a write was sent",
            code="LOCAL_IO_ERROR",
            hint="free disk space or fix that path; the write was sent and may or may not have "
            "happened: check the portal before repeating it",
        )
    return OutcomeUnknownError(
        f"unexpected {type(exc).__name__}: {exc}",
        code="INTERNAL_ERROR",
        hint="a bug in bitrix24-agent (please report it); if the call was a write, it was sent "
        "and may or may not have happened: check the portal before repeating it",
    )


def _file_trouble(exc: OSError) -> str:
    """Which local file failed and why, never its content."""
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot use the local file{where}: {exc.strerror or type(exc).__name__}"


def local_failure(exc: BaseException) -> B24Error:
    """A failure on this machine while no write had left it: exit 4, never "may have run".

    An OSError is a local file that cannot be used (a directory or other non-file where a state
    file should be, permissions, a full disk): the message names the file, never its content.
    Anything else is a bug of ours, reported as one, with the news that no write was sent
    (a read may have been: it changed nothing).
    """
    if isinstance(exc, OSError):
        return ConfigError(
            f"{_file_trouble(exc)}; no write was sent to the portal",
            code="LOCAL_IO_ERROR",
            hint="check that path (a folder or other non-file where a state file should be, "
            "its permissions, free disk space) and B24_STATE_DIR",
        )
    return ConfigError(
        f"unexpected {type(exc).__name__}: {exc}; no write was sent to the portal",
        code="INTERNAL_ERROR",
        hint="a bug in bitrix24-agent (please report it); no write was sent, so the call is "
        "safe to repeat",
    )
