"""Entry point: `python -m sync [--once | --prune]`."""

import sys

from sync.cli import main

sys.exit(main())
