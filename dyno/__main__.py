"""Entry point: `python -m dyno` (the Docker image's CMD, `make run`, the dyno tests)."""

import sys

from dyno.entrypoint import main

sys.exit(main())
