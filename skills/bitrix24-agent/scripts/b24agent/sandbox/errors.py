"""The one exception a sandbox method handler raises to answer with a Bitrix24 error body."""

from __future__ import annotations

from typing import Any


class PortalError(Exception):
    """A Bitrix24 error answer: ``{"error": code, "error_description": description, **extra}``.

    ``status`` is the HTTP status the sandbox answers with (protocol.md section 3). Inside a batch
    only ``code`` and ``description`` reach the per-command ``result_error`` map.
    """

    def __init__(
        self,
        code: str,
        description: str,
        status: int = 400,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The v2 JSON error body."""
        return {"error": self.code, "error_description": self.description, **self.extra}


def not_found(description: str = "Not found") -> PortalError:
    """Old CRM methods answer a missing record with an empty error code (protocol.md section 3)."""
    return PortalError("", description, 400)


def argument_error(description: str, argument: str | None = None) -> PortalError:
    extra = {"argument": argument} if argument else None
    return PortalError("ERROR_ARGUMENT", description, 400, extra)
