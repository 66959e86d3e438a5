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
# ]
# ///
"""Entry point for the guarded Bitrix24 REST CLI (one call, a batch or a full export per run).

Thin on purpose: it puts this folder on sys.path so the bundled b24agent package is found when
the skill folder is copied alone, and works the same when the package is installed. The call
goes to the warm server when one runs (see b24agent/cli/warm/launch.py), so nothing heavy is
imported here; os.path rather than pathlib for the same reason.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from b24agent.cli.warm.launch import main

if __name__ == "__main__":
    sys.exit(main())
