"""Entry point: `python -m gateway` (see gateway/server.py)."""

from gateway.server import main

raise SystemExit(main())
