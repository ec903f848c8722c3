"""Entry point: `python -m sync [--once]`."""

import sys

from sync.cli import main

sys.exit(main())
