"""``python -m b24agent.broker``: the same as ``b24-broker``."""

import sys

from .main import main

sys.exit(main())
