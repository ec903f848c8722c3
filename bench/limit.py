"""The limit: the benchmark SavedModel called in-process, no server, no network.

Batch 1 and batch 32 through both signatures: `serving_default` from JPEG bytes (decoded in the
graph) and `predict_pixels` from float pixels already at the input size. Run in its own process
(`python -m bench.limit MODEL_DIR IMAGE --seconds S`, JSON on stdout) so the benchmark runner
never holds the TensorFlow runtime while the servers are measured.

`--serve` keeps the model loaded for measurements in turns with a system (bench/paired.py):
each line of seconds on stdin is answered, once that long has been spent calling
`serving_default` at batch 1 back to back, by a line of JSON (p50, mean, calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

BATCH = 32


def timed(call: Callable[[], object], seconds: float) -> list[float]:
    """Milliseconds of back-to-back calls for `seconds` (at least 5 calls)."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(model_dir: Path, image: bytes, seconds: float) -> dict[str, Any]:
    """Batch-1 latency and batch-32 images/s for the JPEG and the float signature."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    jpeg, pixels_fn = loaded.signatures["serving_default"], loaded.signatures["predict_pixels"]
    height, width = pixels_fn.structured_input_signature[1]["pixels"].shape[1:3]
    decoded = tf.image.resize(tf.io.decode_jpeg(image, channels=3), (height, width))
    one_pixel = tf.constant(decoded.numpy()[np.newaxis])
    inputs = {
        "jpeg": (jpeg, "images", tf.constant([image]), tf.constant([image] * BATCH)),
        "float": (pixels_fn, "pixels", one_pixel, tf.tile(one_pixel, [BATCH, 1, 1, 1])),
    }
    return interleaved(inputs, seconds)


def interleaved(inputs: dict[str, Any], seconds: float, rounds: int = 3) -> dict[str, Any]:
    """Each measurement in `rounds` slices taken in turn, so a change in the machine's load
    during the run falls on every signature and batch size alike."""
    calls: dict[tuple[str, str], Any] = {}
    for kind, (fn, name, one, batch) in inputs.items():
        for size, value in (("1", one), ("32", batch)):
            calls[kind, size] = lambda fn=fn, name=name, value=value: fn(**{name: value})
    for call in calls.values():  # warm-up: first calls build kernels and thread pools
        call(), call()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            samples[key] += timed(call, seconds / rounds)
    return {
        kind: {
            "batch1_p50_ms": round(statistics.median(samples[kind, "1"]), 2),
            "batch1_mean_ms": round(statistics.fmean(samples[kind, "1"]), 2),
            "batch32_images_per_s": round(BATCH * 1000 / statistics.fmean(samples[kind, "32"]), 1),
        }
        for kind in inputs
    }


def serve(model_dir: Path, image: bytes, lines: Iterable[str], out: TextIO) -> None:
    """Batch-1 JPEG p50 for each requested number of seconds, the model loaded once."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    one = tf.constant([image])
    timed(lambda: signature(images=one), 1.0)  # warm-up: kernels and thread pools
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in lines:
        if not line.strip():
            break
        samples = timed(lambda: signature(images=one), float(line))
        record = {
            "p50_ms": round(statistics.median(samples), 2),
            "mean_ms": round(statistics.fmean(samples), 2),
            "calls": len(samples),
        }
        print(json.dumps(record), file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__)
    parser.add_argument("model_dir", type=Path, help="a version folder (…/mobilenet/1)")
    parser.add_argument("image", type=Path, help="a JPEG")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--serve", action="store_true", help="batch 1 on request (stdin)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.model_dir, args.image.read_bytes(), sys.stdin, sys.stdout)
        return 0
    print(json.dumps(measure(args.model_dir, args.image.read_bytes(), args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
