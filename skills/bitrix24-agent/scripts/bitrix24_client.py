#!/usr/bin/env python3
"""Entry point for the guarded Bitrix24 REST CLI (one call, a batch or a full export per run).

Thin on purpose: it puts this folder on sys.path so the bundled b24agent package is found when
the skill folder is copied alone, and works the same when the package is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from b24agent.cli.client import main

if __name__ == "__main__":
    sys.exit(main())
