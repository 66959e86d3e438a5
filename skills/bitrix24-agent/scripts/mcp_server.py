#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#   "requests>=2.31",
#   "urllib3>=2.6,<3",
#   "python-dotenv>=1.0",
#   "jsonschema>=4.18",
#   "tenacity>=8.2",
#   "filelock>=3.12",
#   "redis>=5.0",
#   "mcp>=2.3,<3",
# ]
# ///
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
