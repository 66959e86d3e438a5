"""What the CLI front ends share: the usage-error parser, argument types and the final error
mapping, so ``b24`` and ``b24-offline-worker`` keep one contract (one JSON line, one exit code)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ..errors import B24Error

__all__ = ["JsonErrorParser", "as_b24_error", "default_mask", "positive_int"]


class JsonErrorParser(argparse.ArgumentParser):
    """argparse that reports usage errors through the one-JSON-line contract (exit 2)."""

    def error(self, message: str) -> NoReturn:
        from ..errors import UsageError

        raise UsageError(
            message, code="USAGE", hint=f"run {self.prog} --help for flags and examples"
        )


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


def as_b24_error(exc: BaseException) -> B24Error:
    """Map anything that ends a run to the error taxonomy, so it prints as one JSON line."""
    from .. import errors

    if isinstance(exc, errors.B24Error):
        return exc
    if isinstance(exc, BrokenPipeError):
        return errors.Interrupted(
            "stdout was closed before the output was complete",
            code="OUTPUT_CLOSED",
            hint="the reader stopped early (e.g. `| head`); rows not read were not written",
        )
    if isinstance(exc, KeyboardInterrupt):
        return errors.Interrupted(
            "interrupted",
            code="INTERRUPTED",
            hint="if a write was in flight it may or may not have run; check before repeating it",
        )
    # A bug of ours: if it struck while a write was in flight, the write may have run, so
    # the fail-safe answer is "outcome unknown" (harmless for reads, honest for writes).
    return errors.OutcomeUnknownError(
        f"unexpected {type(exc).__name__}: {exc}",
        code="INTERNAL_ERROR",
        hint="a bug in bitrix24-agent (please report it); if the call was a write, check the "
        "portal before repeating it",
    )
