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
"""Entry point for the offline event worker: drains the offline queue into a handler, losslessly.

Thin on purpose: it puts this folder on sys.path so the bundled b24agent package is found when
the skill folder is copied alone, and works the same when the package is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from b24agent.cli.worker import main

if __name__ == "__main__":
    sys.exit(main())
