#!/usr/bin/env python3
"""Entry point for the MCP server (``b24-mcp``): the guarded Bitrix24 tools over MCP.

Thin on purpose, like bitrix24_client.py: it puts this folder on sys.path so the bundled
b24agent package is found when the skill folder is copied alone. Needs the ``mcp`` package.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from b24agent.mcp.main import main

if __name__ == "__main__":
    sys.exit(main())
