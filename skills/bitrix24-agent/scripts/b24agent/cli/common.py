"""What the CLI front ends share: the usage-error parser, argument types and the final error
mapping, so ``b24`` and ``b24-offline-worker`` keep one contract (one JSON line, one exit code)."""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NoReturn, TextIO

if TYPE_CHECKING:
    from ..errors import B24Error

__all__ = [
    "JsonErrorParser",
    "as_b24_error",
    "default_mask",
    "positive_int",
    "program",
    "quiet_if_reader_left",
]


class JsonErrorParser(argparse.ArgumentParser):
    """argparse that reports usage errors through the one-JSON-line contract (exit 2)."""

    def error(self, message: str) -> NoReturn:
        from ..errors import UsageError

        raise UsageError(
            message, code="USAGE", hint=f"run {self.prog} --help for flags and examples"
        )


def program(command: str) -> str:
    """The name help and hints show: ``python3 PATH`` when run as a script, as the user typed
    it (the skill never puts the installed commands on PATH), else the installed ``command``."""
    typed = sys.argv[0] if sys.argv else ""
    return f"python3 {typed}" if typed.endswith(".py") else command


def quiet_if_reader_left(exc: BaseException, stdout: TextIO) -> bool:
    """True when ``exc`` is stdout's reader leaving (``| head``): the reader's choice, not a
    failure, so the run ends quietly with exit 0. stdout then points at /dev/null so the
    interpreter's last flush cannot fail again. A broken pipe anywhere else stays an error."""
    if not isinstance(exc, BrokenPipeError):
        return False
    try:
        fd = stdout.fileno()
        poller = select.poll()
        poller.register(fd, 0)  # errors and hang-ups are reported whatever the mask
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
        if gone:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    except (OSError, ValueError):
        return False
    return gone


def positive_int(text: str) -> int:
    """argparse type for counts and limits: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def default_mask(secrets: Iterable[str] = ()) -> Callable[[str], str]:
    """A mask for output made outside a pipeline; before settings load there are no secret
    values to know yet, only secret-shaped positions (``/rest/1/CODE/``, ``access_token=``)."""
    from ..redact import Redactor

    return Redactor(secrets).mask


#: The library says what to do in its own terms (it serves the CLI, MCP and importers alike);
#: for these codes the CLI says it with the flag that does it.
CLI_HINTS = {
    "OUTCOME_UNRESOLVED": "check the portal, then repeat the same command with "
    "--idempotency-resolve failed (it did not happen: send it now) or --idempotency-resolve "
    "done (it happened)",
    "NOT_A_LIST_METHOD": "call it once without --all or --limit",
    "EXPORT_OF_WRITE": "drop --all/--limit to make the call once",
    "BATCH_LINES_UNRESOLVED": "check those lines on the portal, then repeat the same command "
    "with --idempotency-resolve done (they ran) or --idempotency-resolve failed (send them "
    "again); lines already settled are not sent again either way",
    "BATCH_FILE_UNKNOWN": "repeat the same command: lines that ran are not sent again and CRM "
    "creates are found by their ORIGIN_ID; lines that cannot be looked up are named then",
    "AUDIT_LOG_MISSING": "pass the log's path: --verify-audit FILE (default: B24_AUDIT_FILE)",
    "ERROR_METHOD_NOT_FOUND": "no such method here; check the name with --explain METHOD, or "
    "whether it is REST 3.0 only (--rest-v3) or needs a module the portal lacks",
    "insufficient_scope": "the webhook or app lacks the scope this method needs; add it in the "
    "webhook/app settings (--explain METHOD names the scope)",
    "WORKER_RUNNING": "stop the other worker first; to run one per host against the same "
    "portal, give each its own B24_STATE_DIR and pass --no-adopt",
}


def as_b24_error(exc: BaseException, *, dispatched: bool = True) -> B24Error:
    """Map anything that ends a run to the error taxonomy, so it prints as one JSON line.

    ``dispatched``: a write request may have left by now. Until then (reads sent change
    nothing), a bug or an unusable file is a local failure (exit 4); after it, the fail-safe
    answer is "outcome unknown" (exit 7).
    """
    from .. import errors

    if isinstance(exc, errors.B24Error):
        exc.hint = CLI_HINTS.get(exc.code, exc.hint)
        return exc
    if isinstance(exc, KeyboardInterrupt):
        from ..rest.interrupts import interruption_exit_code

        by = f" by {exc}" if str(exc) else ""  # Terminated names its signal
        interrupted = errors.Interrupted(
            f"interrupted{by}",
            code="INTERRUPTED",
            hint="if a write was in flight it may or may not have run; check before repeating it",
        )
        interrupted.exit_code = interruption_exit_code(exc)  # type: ignore[misc]
        return interrupted
    if isinstance(exc, ModuleNotFoundError):
        from ..dependencies import missing_dependency

        missing = missing_dependency(exc)
        if missing is not None:
            return missing
    if not dispatched:
        return errors.local_failure(exc)
    # A bug of ours: if it struck while a write was in flight, the write may have run, so
    # the fail-safe answer is "outcome unknown" (harmless for reads, honest for writes).
    return errors.unexpected_after_sending(exc)
