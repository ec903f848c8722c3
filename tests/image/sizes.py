"""The --memory each image check runs in. With stock TF Serving: the dyno the README's sizing
table names. With the local stand-in (Python TensorFlow: ~600 MiB before any model, see
docs/sizing.md), the smallest limit measured to hold the same load; the gap is reported."""

from __future__ import annotations

# model set -> memory limit, per model server
STOCK = {"demo": "512m", "bench": "1g", "resnet+demo": "1g"}
LOCAL = {"demo": "512m", "bench": "1g", "resnet+demo": "1g"}


def memory_for(image: str, models: str) -> str:
    """The limit for `models` in `image` (dynoserve:stock or dynoserve:local)."""
    return (LOCAL if image.endswith(":local") else STOCK)[models]
