"""bitrix24-agent: a guarded Bitrix24 REST client, offline event worker and sandbox portal.

The package lives inside the skill folder (``skills/bitrix24-agent/scripts/b24agent``) so that the
folder keeps working when an agent runtime copies it alone; ``pyproject.toml`` maps it for installs.
"""

__version__ = "0.1.0"
