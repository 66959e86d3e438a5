#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Entry point for the local Bitrix24 sandbox portal on 127.0.0.1.

Thin on purpose: it puts this folder on sys.path so the bundled b24agent package is found when
the skill folder is copied alone, and works the same when the package is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from b24agent.cli.sandbox import main

if __name__ == "__main__":
    sys.exit(main())
