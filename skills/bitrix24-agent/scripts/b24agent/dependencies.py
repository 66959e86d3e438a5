"""The third-party packages the scripts need, and the one error that says how to install them.

A copied skill folder runs on whatever ``python3`` the agent has. When a package is missing the
scripts end with exit 4 and this error (one JSON line) instead of a traceback or an "outcome
unknown". It is safe to call it a configuration error: ``rest/client.py`` and ``settings.py``
import the first five packages, so a missing one surfaces before any request can leave; redis-py
is imported only for B24_STATE_BACKEND=redis://..., before any request too.

The lists themselves are ``scripts/requirements.txt`` (and ``requirements-mcp.txt``, the mcp SDK
that only mcp_server.py needs): pyproject.toml reads them for the wheel and each script's PEP
723 header repeats what it needs for ``uv run`` (tests/test_scripts.py keeps them equal).
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from . import __version__
from .errors import ConfigError

__all__ = [
    "DISTRIBUTIONS",
    "MCP_REQUIREMENTS",
    "REQUIREMENTS",
    "URLLIB3_AT_LEAST",
    "URLLIB3_BELOW",
    "check_urllib3",
    "missing_dependency",
]

#: Import name of each runtime package -> the name pip installs it by.
DISTRIBUTIONS = {
    "requests": "requests",
    "urllib3": "urllib3",
    "dotenv": "python-dotenv",
    "jsonschema": "jsonschema",
    "tenacity": "tenacity",
    "filelock": "filelock",
    "redis": "redis",
    "mcp": "mcp",
}
#: The scripts' folder in the skill folder, where the requirements files sit (they are absent
#: when the package was installed as a wheel).
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(SCRIPTS, "requirements.txt")
#: mcp_server.py needs the mcp SDK too; the other scripts do not, so it has its own file.
MCP_REQUIREMENTS = os.path.join(SCRIPTS, "requirements-mcp.txt")


def missing_dependency(exc: ModuleNotFoundError) -> ConfigError | None:
    """The exit-4 error for a missing runtime package, or None if ``exc`` is about another
    module (then it stays what it was)."""
    distribution = DISTRIBUTIONS.get((exc.name or "").partition(".")[0])
    if distribution is None:
        return None
    return ConfigError(
        f"Python package {distribution} is not installed for {sys.executable}",
        code="DEPENDENCY_MISSING",
        hint=f"install the skill's packages: {install_commands(distribution == 'mcp')}",
    )


#: The oldest urllib3 that inflates a compressed answer a bounded step per read: before 2.6 one
#: read of a "gzip, gzip" answer inflates without bound, so rest/answers.py's ceiling on the
#: decoded size (B24_MAX_ANSWER_MB) would come too late. requests alone allows urllib3 1.26.
URLLIB3_AT_LEAST = (2, 6)
#: The first urllib3 we do not know: rest/pools.py hands each connection's socket to the
#: answer deadline from inside urllib3 2's connection and pool classes, which a new major
#: version may change; a deadline that silently stopped watching would let a portal hold a
#: call for ever, so an unknown major version is refused rather than trusted.
URLLIB3_BELOW = (3, 0)


def check_urllib3(version: str) -> None:
    """Refuse to talk HTTP with an urllib3 outside [URLLIB3_AT_LEAST, URLLIB3_BELOW) (exit 4,
    before any request leaves), as for a missing package: a pip that kept an old urllib3, or
    installed a new major version, is not known to be safe."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < URLLIB3_AT_LEAST:
        raise ConfigError(
            f"Python package urllib3 {version} is too old for {sys.executable}: 2.6 or later "
            "bounds how far a compressed answer inflates",
            code="DEPENDENCY_TOO_OLD",
            hint=f"install the skill's packages: {install_commands()}",
        )
    if found >= URLLIB3_BELOW:
        raise ConfigError(
            f"Python package urllib3 {version} is newer than this version of bitrix24-agent "
            f"knows for {sys.executable}: the answer deadline is tested with urllib3 2",
            code="DEPENDENCY_TOO_NEW",
            hint=f"install the skill's packages: {install_commands()}",
        )


def install_commands(mcp: bool = False) -> str:
    """The exact commands for this interpreter: pip, uv pip, and ``uv run`` for a script."""
    python = shlex.quote(sys.executable)
    if not os.path.isfile(REQUIREMENTS):
        return f"{python} -m pip install 'bitrix24-agent=={__version__}'"
    files = [REQUIREMENTS, MCP_REQUIREMENTS] if mcp else [REQUIREMENTS]
    requirements = " ".join(f"-r {shlex.quote(path)}" for path in files)
    commands = (
        f"{python} -m pip install {requirements}; or with uv: "
        f"uv pip install --python {python} {requirements}"
    )
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script.endswith(".py"):
        commands += f"; or run it as uv run {shlex.quote(script)} ..., which needs no install"
    return commands
