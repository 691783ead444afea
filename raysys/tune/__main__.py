"""``python -m raysys.tune``: the same as ``raysys tune``."""

import sys

from raysys.tune.cli import main

sys.exit(main())
