"""The in-graph JPEG path: what each decode costs, and whether the cheaper one keeps the answers.

Variants of export.signatures.decode_and_resize on 640x480 photo-like JPEGs (bench/images.py):
  full        decode every pixel, bilinear resize (the export default)
  antialiased decode every pixel, antialiased bilinear resize
  scaled      libjpeg DCT scaling (ratio 2/4/8 from the header), bilinear resize
Measured: time per image (one at a time, and batches of 32 through map_fn as the serving graph
runs them; also one 12-megapixel photo); top-1 agreement with "full" on the trained demo model
(shapes drawn large, as 640x480 JPEGs) and on the benchmark MobileNet (photo-like images); and
the benchmark model alone at batch 32, JPEG in vs float pixels in, with each decode.
Run: python -m bench.jpeg_decode [--images N] [--seconds S]   (JSON in bench/results/)
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import encode, photo
from devtools.processes import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "jpeg_decode.json"
DEMO_MODEL = REPO_ROOT / "exports" / "shapes" / "2"
BATCH = 32


def variants() -> dict[str, Callable[[Any, tuple[int, int]], Any]]:
    import tensorflow as tf

    from export.signatures import JPEG_FULL, JPEG_SCALED, decode_and_resize

    def antialiased(data: Any, size: tuple[int, int]) -> Any:
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.resize(image, size, method="bilinear", antialias=True)

    return {
        "full": lambda data, size: decode_and_resize(data, size, JPEG_FULL),
        "antialiased": antialiased,
        "scaled": lambda data, size: decode_and_resize(data, size, JPEG_SCALED),
    }


def per_second(call: Callable[[Any], object], arg: Any, seconds: float) -> float:
    """Calls of `call(arg)` per second over `seconds`, after two warm-up calls."""
    call(arg), call(arg)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call(arg)
        count += 1
    return count / (time.perf_counter() - started)


def cpu_ms_per_call(call: Callable[[Any], object], arg: Any, seconds: float) -> float:
    """CPU milliseconds (this process, all threads) per `call(arg)`: steadier than wall time
    on a machine shared with other work, since time spent waiting for a core is not counted."""
    call(arg), call(arg)
    count, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        call(arg)
        count += 1
    return 1000 * (time.process_time() - started) / count


def decode_speed(images: Sequence[bytes], seconds: float) -> dict[str, dict[str, float]]:
    """ms per image alone, and images/s for batches of 32 decoded by map_fn (8 in parallel)."""
    import tensorflow as tf

    one, batch = (
        tf.constant(images[0]),
        tf.constant([images[i % len(images)] for i in range(BATCH)]),
    )
    found = {}
    for name, decode in variants().items():
        single = tf.function(lambda d, decode=decode: decode(d, (224, 224)))
        mapped = tf.function(
            lambda b, decode=decode: tf.map_fn(
                lambda d: decode(d, (224, 224)),
                b,
                parallel_iterations=8,
                fn_output_signature=tf.TensorSpec([224, 224, 3], tf.float32),
            )
        )
        found[name] = {
            "ms_per_image": round(1000 / per_second(single, one, seconds), 2),
            "cpu_ms_per_image": round(cpu_ms_per_call(single, one, seconds), 2),
            "batch32_images_per_s": round(BATCH * per_second(mapped, batch, seconds), 1),
        }
    return found


def demo_images(count: int) -> tuple[list[bytes], list[int]]:
    """Shapes of the demo model's classes drawn at 480x480, stretched to 640x480 JPEGs."""
    from PIL import Image

    from export.demo_config import COLOURS
    from export.shapes import class_names, draw

    classes = class_names(COLOURS, ("circle", "square", "triangle"))
    rng = np.random.default_rng(7)
    images, labels = [], []
    for i in range(count):
        label = i % len(classes)
        picture = Image.fromarray(draw(classes[label], rng, size=480)).resize((640, 480))
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=90)
        images.append(out.getvalue())
        labels.append(label)
    return images, labels


def top1(predict: Any, size: tuple[int, int], images: Sequence[bytes], decode: Any) -> np.ndarray:
    import tensorflow as tf

    pixels = tf.stack([decode(tf.constant(data), size) for data in images])
    outputs = predict(pixels=pixels)
    return np.argmax(outputs["probabilities"].numpy(), axis=1)


def agreement(model_dir: Path, images: Sequence[bytes], labels: Sequence[int] | None) -> dict:
    """Top-1 of each variant against "full" (and accuracy when labels are known)."""
    import tensorflow as tf

    predict = tf.saved_model.load(str(model_dir)).signatures["predict_pixels"]
    size = tuple(predict.structured_input_signature[1]["pixels"].shape[1:3])
    answers = {name: top1(predict, size, images, fn) for name, fn in variants().items()}
    result: dict[str, Any] = {"model": str(model_dir.relative_to(REPO_ROOT)), "images": len(images)}
    for name, answer in answers.items():
        entry = {"top1_agreement_with_full": round(float(np.mean(answer == answers["full"])), 4)}
        if labels is not None:
            entry["accuracy"] = round(float(np.mean(answer == np.asarray(labels))), 4)
        result[name] = entry
    return result


def model_alone(images: Sequence[bytes], seconds: float) -> dict[str, float]:
    """The benchmark model in-process at batch 32: float pixels in, and JPEG in per decode."""
    import tensorflow as tf

    from export.benchmodel import INPUT_SIZE, build_classifier, labels
    from export.preprocessing import Preprocessing
    from export.signatures import JPEG_DECODES, ServingModule

    classifier, preprocessing = build_classifier(), Preprocessing(INPUT_SIZE, "minus_one_to_one")
    batch = tf.constant([images[i % len(images)] for i in range(BATCH)])
    calls: dict[str, tuple[Any, Any]] = {}
    for decode in JPEG_DECODES:
        module = ServingModule(classifier, labels(), preprocessing, jpeg_decode=decode)
        calls[f"jpeg_{decode}"] = (tf.function(module.serve_images), batch)
    # The traced float-input graph both signatures end in, on pixels decoded beforehand.
    calls["float"] = (module._classify, module.decode_images(batch)[0])
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(3):  # in turns, so load drift on a shared machine falls on all alike
        for name, (fn, arg) in calls.items():
            rates[name].append(per_second(fn, arg, seconds / 3))
    return {name: round(BATCH * statistics.fmean(r), 1) for name, r in rates.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.jpeg_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=180, help="per agreement set")
    parser.add_argument("--seconds", type=float, default=4.0, help="per speed measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    photos = [encode(photo(seed)) for seed in range(args.images)]
    shapes, shape_labels = demo_images(args.images)
    bench_model = REPO_ROOT / "var" / "bench-models" / "mobilenet" / "1"
    parts: dict[str, Callable[[], Any]] = {
        "decode_speed": lambda: decode_speed(photos[:8], args.seconds),
        "decode_speed_12mp": lambda: decode_speed([encode(photo(0, (4000, 3000)), 3_500_000)], 2),
        "agreement_demo_model": lambda: agreement(DEMO_MODEL, shapes, shape_labels),
        "agreement_benchmark_model": lambda: agreement(bench_model, photos, None),
        "model_alone_batch32_images_per_s": lambda: model_alone(photos[:8], args.seconds),
    }
    result: dict[str, Any] = {"photo_kb": round(statistics.fmean(map(len, photos)) / 1000, 1)}
    for name, measure in parts.items():
        result[name] = measure()
        print(name, json.dumps(result[name]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
