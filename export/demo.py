"""`python -m export.demo`: train the demo classifier on generated shapes and export two versions.

Version 1 knows circles and squares in red, green and blue (6 classes); version 2 starts from
version 1's features and also learns triangles (9 classes), which shows a new version with new
classes answering with its own labels at once. Seeded: the same run gives the same models.
Also writes the sample images the README's examples send (docs/samples/), and a sync manifest
that serves both versions with the labels `stable` (1) and `canary` (2), so `make run` shows
version and label pinning.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from export.demo_config import NAME, PLANS
from export.errors import ExportError
from export.settings import ExportSettings
from export.tfimport import import_tensorflow
from modelrepo import MANIFEST_NAME
from modelrepo.manifest import ModelManifest, VersionPolicy

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "docs" / "samples"
# The sync manifest (docs/sync.md): every version served, two labels.
MANIFEST = ModelManifest(VersionPolicy(kind="all"), {"stable": 1, "canary": 2})


def main(argv: Sequence[str] | None = None) -> int:
    settings = ExportSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__)
    parser.add_argument("--export-dir", type=Path, default=settings.export_dir)
    parser.add_argument("--samples-dir", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--force", action="store_true", help="retrain and replace both versions")
    args = parser.parse_args(argv)
    model_dir = args.export_dir / NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    # Two `make` runs at once (run and test in two shells) would both train: one waits instead.
    with (model_dir / ".demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not args.force and all((model_dir / str(p.version)).exists() for p in PLANS):
            print(f"{model_dir} has versions 1 and 2 already (--force retrains)")
            write_manifest(model_dir)
            return 0
        import_tensorflow()  # before training.py imports it: without the C++ banner
        from export.training import build_demo

        try:
            build_demo(model_dir, args.samples_dir, force=args.force)
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        write_manifest(model_dir)
    return 0


def write_manifest(model_dir: Path) -> None:
    """Serve every demo version and label them (written atomically; an existing one is kept)."""
    target = model_dir / MANIFEST_NAME
    if target.exists():
        return
    staging = target.with_name(f".{MANIFEST_NAME}.tmp")
    staging.write_text(MANIFEST.render())
    staging.replace(target)
    print(f"wrote {target}: every version served, labels {dict(MANIFEST.labels)}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
