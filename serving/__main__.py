"""`python -m serving`: the launcher (stock tensorflow_model_server when present, else the local server)."""

import sys

from serving.launcher import main

sys.exit(main())
