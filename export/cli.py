"""`python -m export`: the command line of `make export`.

Arguments are parsed and checked before TensorFlow is imported, so `--help` and usage errors
answer at once. Exit codes: 0 written, 1 export failed, 2 usage error; nothing is written
unless the export is complete and verified.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.checkpoint_types import Kind, LoadOptions
from export.errors import ExportError, UsageError
from export.preprocessing import NORMALIZATIONS
from export.progress import ProgressPrinter
from export.repository import parse_version
from export.settings import ExportSettings
from export.tfimport import import_tensorflow

EPILOG = """\
checkpoint kinds (detected from the path; --kind overrides):
  model.keras                 Keras 3 model file
  model.h5                    HDF5 model file: tf.keras 1.x/2.x (read with tf_keras) or
                              Keras 3 (read with Keras 3), as its keras_version says
  ckpt-5 | train_dir/         TF2 tf.train.Checkpoint(model=...) prefix or directory,
                              with --architecture mobilenet_v1 --alpha A --input-size S --classes C
                              or --architecture model.json: a Keras model.to_json(), or
                              {"architecture": "mobilenet_v1", "alpha": 0.5,
                               "input_size": [160, 160], "classes": 40}
  model.ckpt | model.ckpt.meta  TF1 checkpoint with its .meta graph,
                              with --input-tensor NAME:0 --output-tensor NAME:0

examples:
  python -m export flowers.h5 --name flowers --labels labels.txt
  python -m export train/ --name mobilenet --architecture mobilenet_v1 --alpha 0.5 \\
      --input-size 160 --classes 40 --labels labels.txt
  python -m export model.ckpt --name legacy --input-tensor input:0 --output-tensor probs:0 \\
      --normalization zero_to_one --labels labels.txt
"""


def build_parser(settings: ExportSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a training checkpoint as a verified TF Serving version "
        "<export-dir>/<name>/<version>/ (see docs/export.md).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="model file, checkpoint prefix or directory")
    parser.add_argument("--name", required=True, help="model name (the directory under export-dir)")
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=settings.export_dir,
        help="local model repository (default: $DYNOSERVE_EXPORT_DIR or exports; now %(default)s)",
    )
    parser.add_argument("--version", help="positive integer (default: highest present + 1)")
    parser.add_argument("--labels", type=Path, help="class names, one per line, in output order")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    _add_model_arguments(parser)
    _add_preprocessing_arguments(parser)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--kind", choices=[k.value for k in Kind], help="skip detection")
    group.add_argument("--architecture", help="TF2: mobilenet_v1 or a JSON architecture file")
    group.add_argument("--alpha", type=float, default=1.0, help="TF2 mobilenet_v1 width (1.0)")
    group.add_argument("--classes", type=int, help="TF2 mobilenet_v1 classes (default: labels)")
    group.add_argument(
        "--checkpoint-key", default="model", help="TF2: tf.train.Checkpoint(<key>=model) (model)"
    )
    group.add_argument("--input-tensor", help="TF1: image input tensor, e.g. input:0")
    group.add_argument("--output-tensor", help="TF1: probabilities (or logits) tensor")
    group.add_argument("--softmax", action="store_true", help="the model outputs logits")


def _add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing (recorded in the export)")
    group.add_argument("--input-size", help="H or HxW (default: the model's own input size)")
    group.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="minus_one_to_one",
        help="pixel scaling the model was trained with (default: %(default)s, MobileNet's)",
    )
    group.add_argument("--mean", help="mean_std: R,G,B means in 0..255 units")
    group.add_argument("--std", help="mean_std: R,G,B standard deviations in 0..255 units")
    group.add_argument("--warmup-image", type=Path, help="image for the warmup request")
    group.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |diff| export vs source (1e-4)"
    )


def parse_size(text: str | None) -> tuple[int, int] | None:
    """ "224" or "224x160" (height x width)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--input-size must be H or HxW; got {text!r}")
    height, width = int(parts[0]), int(parts[-1])
    return height, width


def parse_triple(
    text: str | None, default: tuple[float, float, float], flag: str
) -> tuple[float, float, float]:
    if text is None:
        return default
    try:
        red, green, blue = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise UsageError(
            f"{flag} must be three comma-separated numbers R,G,B; got {text!r}"
        ) from exc
    return red, green, blue


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ExportRequest fields the arguments describe, each one parsed and checked.

    This runs before the exporter (and so TensorFlow) is imported: a typo costs a fraction of
    a second, not the seconds TensorFlow takes to load.
    """
    return {
        "checkpoint": args.checkpoint,
        "name": args.name,
        "export_dir": args.export_dir,
        "version": parse_version(args.version) if args.version is not None else None,
        "labels_file": args.labels,
        "kind": Kind(args.kind) if args.kind else None,
        "load": LoadOptions(
            architecture=args.architecture,
            alpha=args.alpha,
            input_size=parse_size(args.input_size),
            classes=args.classes,
            checkpoint_key=args.checkpoint_key,
            input_tensor=args.input_tensor,
            output_tensor=args.output_tensor,
        ),
        "normalization": args.normalization,
        "mean": parse_triple(args.mean, (0.0, 0.0, 0.0), "--mean"),
        "std": parse_triple(args.std, (1.0, 1.0, 1.0), "--std"),
        "softmax": args.softmax,
        "warmup_image": args.warmup_image,
        "force": args.force,
        "tolerance": args.tolerance,
    }


def main(argv: Sequence[str] | None = None) -> int:
    settings = ExportSettings.from_env()
    args = build_parser(settings).parse_args(argv)
    progress = ProgressPrinter()
    try:
        fields = request_fields(args)
        progress("loading TensorFlow")
        import_tensorflow()
        from export.exporter import ExportRequest, export

        summary = export(ExportRequest(**fields), progress)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(summary.describe())
    progress(f"done: {summary.path}")
    return 0


def run() -> None:
    # TensorFlow's C++ start-up chatter hides the progress lines; the Makefile sets the same.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
