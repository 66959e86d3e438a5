"""bitrix24-agent: a guarded Bitrix24 REST client, offline event worker and sandbox portal.

The public face for developers who import the library::

    from b24agent import Bitrix24Client, load_settings, NotFoundError

    with Bitrix24Client(load_settings()) as client:
        lead_id = client.call("crm.lead.add", {"fields": {"TITLE": "Web form"}}).result

``Bitrix24Client``, ``Settings``, ``load_settings``, ``CorruptStateError`` and the whole
``B24Error`` tree (errors.py draws it with each class's CLI exit code) are the supported names;
everything else is internal and may move. Every one is resolved on first use (PEP 562), because
``b24`` imports this package on its warm-start path, where every millisecond shows.

The package lives inside the skill folder (``skills/bitrix24-agent/scripts/b24agent``) so that the
folder keeps working when an agent runtime copies it alone; ``pyproject.toml`` maps it for installs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no ``typing`` at run time: see errors.py
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

#: The public names -> the module (relative to this package) that defines each; the error
#: classes (every class errors.py exports) are added on first use, because importing errors.py
#: was 0.4 ms of b24's 18 ms warm call.
_LAZY = {"Bitrix24Client": ".rest.client", "Settings": ".settings", "load_settings": ".settings"}


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(name, __name__)


def _error_tree() -> tuple[str, ...]:
    return tuple(name for name in _module(".errors").__all__ if name[0].isupper())


def __getattr__(name: str) -> Any:
    if name == "__all__":
        value: Any = ["Bitrix24Client", "Settings", "__version__", "load_settings", *_error_tree()]
    elif name in _LAZY:
        value = getattr(_module(_LAZY[name]), name)
    elif not name.startswith("_") and name in _error_tree():
        value = getattr(_module(".errors"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__getattr__("__all__"))
