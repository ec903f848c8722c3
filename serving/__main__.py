"""`python -m serving`: the launcher (stock tensorflow_model_server if found, else local)."""

import sys

from serving.launcher import main

sys.exit(main())
