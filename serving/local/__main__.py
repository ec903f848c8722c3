"""`python -m serving.local`: the TF-Serving-compatible local model server (main.py)."""

import sys

from serving.local.main import main

sys.exit(main())
