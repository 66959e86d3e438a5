"""bitrix24-agent: a guarded Bitrix24 REST client, offline event worker and sandbox portal.

The public face for developers who import the library::

    from b24agent import Bitrix24Client, load_settings, NotFoundError

    with Bitrix24Client(load_settings()) as client:
        lead_id = client.call("crm.lead.add", {"fields": {"TITLE": "Web form"}}).result

``Bitrix24Client``, ``Settings``, ``load_settings``, ``CorruptStateError`` and the whole
``B24Error`` tree (errors.py draws it with each class's CLI exit code) are the supported names;
everything else is internal and may move. The client and settings are resolved on first use
(PEP 562), because ``b24`` imports this package on its warm-start path, where every millisecond
shows.

The package lives inside the skill folder (``skills/bitrix24-agent/scripts/b24agent``) so that the
folder keeps working when an agent runtime copies it alone; ``pyproject.toml`` maps it for installs.
"""

from __future__ import annotations

from . import errors as _errors

TYPE_CHECKING = False  # no ``typing`` at run time: see errors.py
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

#: The error tree: every class errors.py exports (its functions stay internal). errors.py is
#: stdlib-only, so importing it here costs the warm-start path nothing it would notice.
_ERRORS = tuple(name for name in _errors.__all__ if name[0].isupper())
globals().update({name: getattr(_errors, name) for name in _ERRORS})
#: The heavier public names -> the module (relative to this package) that defines each.
_LAZY = {"Bitrix24Client": ".rest.client", "Settings": ".settings", "load_settings": ".settings"}

__all__ = ["Bitrix24Client", "Settings", "__version__", "load_settings", *_ERRORS]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
