"""The third-party packages the scripts need, and the one error that says how to install them.

A copied skill folder runs on whatever ``python3`` the agent has. When a package is missing the
scripts end with exit 4 and this error (one JSON line) instead of a traceback or an "outcome
unknown". It is safe to call it a configuration error: ``rest/client.py`` and ``settings.py``
import all five packages, so a missing one surfaces before any request can leave.

The list itself is ``scripts/requirements.txt``: pyproject.toml reads it for the wheel and each
script's PEP 723 header repeats it for ``uv run`` (tests/test_packaging.py keeps them equal).
"""

from __future__ import annotations

import os
import shlex
import sys

from . import __version__
from .errors import ConfigError

__all__ = ["DISTRIBUTIONS", "REQUIREMENTS", "missing_dependency"]

#: Import name of each runtime package -> the name pip installs it by.
DISTRIBUTIONS = {
    "requests": "requests",
    "dotenv": "python-dotenv",
    "jsonschema": "jsonschema",
    "tenacity": "tenacity",
    "filelock": "filelock",
}
#: Next to the scripts in the skill folder; absent when the package was installed as a wheel.
REQUIREMENTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements.txt"
)


def missing_dependency(exc: ModuleNotFoundError) -> ConfigError | None:
    """The exit-4 error for a missing runtime package, or None if ``exc`` is about another
    module (then it stays what it was)."""
    distribution = DISTRIBUTIONS.get((exc.name or "").partition(".")[0])
    if distribution is None:
        return None
    return ConfigError(
        f"Python package {distribution} is not installed for {sys.executable}",
        code="DEPENDENCY_MISSING",
        hint=f"install the skill's packages: {install_commands()}",
    )


def install_commands() -> str:
    """The exact commands for this interpreter: pip, uv pip, and ``uv run`` for a script."""
    python = shlex.quote(sys.executable)
    if not os.path.isfile(REQUIREMENTS):
        return f"{python} -m pip install 'bitrix24-agent=={__version__}'"
    requirements = shlex.quote(REQUIREMENTS)
    commands = (
        f"{python} -m pip install -r {requirements}; or with uv: "
        f"uv pip install --python {python} -r {requirements}"
    )
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script.endswith(".py"):
        commands += f"; or run it as uv run {shlex.quote(script)} ..., which needs no install"
    return commands
