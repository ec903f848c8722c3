"""`python -m export.benchmodel`: the benchmark model, MobileNet v1 224x224 with 40 classes.

No weights can be downloaded here, so the weights are random (seeded): the architecture and the
compute per image are the real thing, which is all a latency and throughput benchmark needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import ExportError
from export.settings import ExportSettings

NAME = "mobilenet"
CLASSES = 40
INPUT_SIZE = (224, 224)
ALPHA = 1.0
SEED = 40
SOURCE = f"keras.applications.MobileNet(alpha={ALPHA}, weights=None, seed={SEED})"

if TYPE_CHECKING:
    from export.servable import ServableSummary


def main(argv: Sequence[str] | None = None) -> int:
    settings = ExportSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m export.benchmodel", description=__doc__)
    parser.add_argument("--export-dir", type=Path, default=settings.export_dir)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)
    target = args.export_dir / NAME / str(args.version)
    if target.exists() and not args.force:
        print(f"{target} exists; keeping it (--force rebuilds)")
        return 0
    try:
        print(write_benchmark_model(target, args.version, force=args.force).describe())
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def write_benchmark_model(target: Path, version: int, *, force: bool = False) -> ServableSummary:
    """Build the seeded random MobileNet and write it as `target`; returns the summary."""
    from export.progress import ProgressPrinter
    from export.servable import Preprocessing, ServableSpec, write_servable

    progress = ProgressPrinter()
    started = time.monotonic()
    model = build_classifier()
    progress(f"built MobileNet v1 in {time.monotonic() - started:.1f}s")
    spec = ServableSpec(
        model,
        labels(),
        Preprocessing(input_size=INPUT_SIZE, normalization="minus_one_to_one"),
        target,
        name=NAME,
        version=version,
        source={"kind": "random", "path": SOURCE},
        overwrite=force,
    )
    return write_servable(spec, progress=progress)


def build_classifier() -> Any:
    """The seeded random MobileNet as a Keras model: the same weights on every call, so the
    benchmark's in-process baseline classifies with exactly the model that was exported."""
    import keras

    from export.architectures import MobileNetSpec, build_mobilenet_v1

    keras.utils.set_random_seed(SEED)
    return build_mobilenet_v1(MobileNetSpec(ALPHA, INPUT_SIZE, CLASSES))


def labels() -> list[str]:
    """The benchmark model's class names."""
    return [f"class_{i:02d}" for i in range(CLASSES)]


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
