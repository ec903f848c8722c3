"""Training of the demo classifier: generated shapes in, two verified servable versions out.

The images go through the same bilinear resize and normalisation the serving graph applies,
so what the model learns is exactly what it will be shown in production.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from export.demo_config import COLOURS, INPUT_SIZE, NAME, NORMALIZATION, DemoConfig, Plan
from export.errors import TrainingFailed, VerificationFailed
from export.preprocessing import Preprocessing
from export.progress import ProgressPrinter
from export.servable import ServableSpec, write_servable
from export.shapes import Dataset, class_names, draw, generate

# Validation accuracy at which training stops early (the held-out test set is separate).
_TARGET_VALIDATION = 0.99
_MIN_EPOCHS = 3
_BATCH = 32
_LEARNING_RATE = 3e-3
# Sample images for the README: (file name, class, seed); JPEG and GIF show the decoder's range.
SAMPLES = (
    ("red-circle.png", "red-circle", 11),
    ("green-square.png", "green-square", 12),
    ("blue-triangle.png", "blue-triangle", 13),
    ("blue-circle.jpg", "blue-circle", 14),
    ("red-triangle.gif", "red-triangle", 15),
)


@dataclass(frozen=True)
class Splits:
    """Normalised training, validation and held-out test arrays for one version."""

    classes: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def build_demo(
    model_dir: Path, samples_dir: Path, config: DemoConfig | None = None, *, force: bool = False
) -> None:
    """Train and export every planned version, then write and check the sample images."""
    config = config or DemoConfig()
    progress = ProgressPrinter()
    previous: Any = None
    for plan in config.plans:
        previous = _build_version(plan, previous, model_dir, config, force, progress)
    written = write_samples(samples_dir)
    progress(f"sample images in {samples_dir}: {', '.join(written)}")
    if config.check_samples:
        check_samples(model_dir, samples_dir, config.plans)
        progress("every sample is classified correctly by the versions that know its class")


def _build_version(
    plan: Plan,
    previous: Any,
    model_dir: Path,
    config: DemoConfig,
    force: bool,
    progress: ProgressPrinter,
) -> Any:
    """Train one planned version and export it; returns the trained model."""
    classes = class_names(COLOURS, plan.shapes)
    model, accuracy = _train_version(plan, classes, previous, config, progress)
    spec = ServableSpec(
        model,
        classes,
        Preprocessing(input_size=INPUT_SIZE, normalization=NORMALIZATION),
        model_dir / str(plan.version),
        name=NAME,
        version=plan.version,
        source={"kind": "demo", "path": f"export.demo (seed {plan.seed}, accuracy {accuracy:.4f})"},
        overwrite=force,
    )
    summary = write_servable(spec, progress=progress)
    print(summary.describe(), flush=True)
    return model


def _train_version(
    plan: Plan,
    classes: Sequence[str],
    previous: Any,
    config: DemoConfig,
    progress: ProgressPrinter,
) -> tuple[Any, float]:
    """A trained model and its held-out accuracy, which must reach the required level."""
    progress(f"version {plan.version}: generating images of {len(classes)} classes")
    splits = make_splits(classes, plan, config)
    keras.utils.set_random_seed(plan.seed)
    model = new_model(len(classes))
    if previous is not None:  # keep what version 1 learned about colours and edges
        copy_features(previous, model)
    started = time.monotonic()
    epochs = train(model, splits, plan, progress)
    accuracy = evaluate(model, splits.test)
    progress(
        f"version {plan.version}: {epochs} epochs in {time.monotonic() - started:.0f}s, "
        f"held-out accuracy {accuracy:.1%} on {len(splits.test[1])} images"
    )
    if accuracy < config.required_accuracy:
        raise TrainingFailed(
            f"version {plan.version}: held-out accuracy {accuracy:.1%} "
            f"< {config.required_accuracy:.0%}"
        )
    return model, accuracy


def make_splits(classes: Sequence[str], plan: Plan, config: DemoConfig) -> Splits:
    """Three disjoint generated sets (different seeds), resized and normalised like serving."""
    sets = [
        generate(classes, plan.per_class, seed=plan.seed * 100),
        generate(classes, config.validation_per_class, seed=plan.seed * 100 + 1),
        generate(classes, config.test_per_class, seed=plan.seed * 100 + 2),
    ]
    train, validation, test = (_as_input(d) for d in sets)
    return Splits(tuple(classes), train, validation, test)


def _as_input(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    scale, offset = Preprocessing(INPUT_SIZE, NORMALIZATION).scale_offset()
    resized = tf.image.resize(dataset.images, INPUT_SIZE, method="bilinear")
    return (resized.numpy() * np.float32(scale[0]) + np.float32(offset[0])), dataset.labels


def new_model(classes: int) -> Any:
    """Three conv blocks and a softmax head: small enough to train in seconds on 2 cores."""
    layers = keras.layers
    blocks: list[Any] = [keras.Input((*INPUT_SIZE, 3))]
    for filters in (24, 32, 48):
        blocks += [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            # A short memory, so the inference statistics catch up within a few epochs.
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.MaxPooling2D() if filters != 48 else layers.GlobalAveragePooling2D(),
        ]
    blocks.append(layers.Dense(classes, activation="softmax", name="classes"))
    return keras.Sequential(blocks, name="shapes")


def copy_features(source: Any, target: Any) -> None:
    """Copy every layer's weights but the classification head."""
    for old, new in zip(source.layers[:-1], target.layers[:-1], strict=True):
        new.set_weights(old.get_weights())


def train(model: Any, splits: Splits, plan: Plan, progress: ProgressPrinter) -> int:
    """Epochs until the validation accuracy reaches the target; returns how many ran.

    A plain loop over numpy batches rather than model.fit: the shuffling is ours (seeded), and
    no tf.data pipeline is built for a data set that fits in memory several times over.
    """
    x, y = splits.train
    step = _train_step(model)
    rng = np.random.default_rng(plan.seed)
    usable = len(x) - len(x) % _BATCH  # equal batches: one trace of the step
    for epoch in range(1, plan.max_epochs + 1):
        order = rng.permutation(len(x))[:usable].reshape(-1, _BATCH)
        losses = [float(step(tf.constant(x[batch]), tf.constant(y[batch]))) for batch in order]
        validation = evaluate(model, splits.validation)
        progress(
            f"  epoch {epoch}: loss {np.mean(losses):.3f}, validation accuracy {validation:.1%}"
        )
        if epoch >= _MIN_EPOCHS and validation >= _TARGET_VALIDATION:
            return epoch
    return plan.max_epochs


def _train_step(model: Any) -> Any:
    optimizer = keras.optimizers.Adam(_LEARNING_RATE)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    return step


def evaluate(model: Any, split: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = split
    predicted = [
        np.argmax(model(tf.constant(x[i : i + 512]), training=False).numpy(), axis=1)
        for i in range(0, len(x), 512)
    ]
    return float(np.mean(np.concatenate(predicted) == y))


def write_samples(directory: Path) -> list[str]:
    """Deterministic sample images; files already holding the same bytes are left untouched."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for filename, label, seed in SAMPLES:
        # Large, clear shapes: these are the pictures a reader sees first.
        image = Image.fromarray(draw(label, np.random.default_rng(seed), radius=0.3))
        buffer = io.BytesIO()
        image.save(buffer, format=Image.registered_extensions()[Path(filename).suffix])
        path = directory / filename
        if not path.exists() or path.read_bytes() != buffer.getvalue():
            path.write_bytes(buffer.getvalue())
    return [filename for filename, _label, _seed in SAMPLES]


def check_samples(model_dir: Path, samples_dir: Path, plans: Sequence[Plan]) -> None:
    """The README promises these answers: make sure the exported versions give them."""
    for plan in plans:
        loaded = tf.saved_model.load(str(model_dir / str(plan.version)))
        known = set(class_names(COLOURS, plan.shapes))
        cases = [(f, label) for f, label, _seed in SAMPLES if label in known]
        images = [(samples_dir / f).read_bytes() for f, _label in cases]
        out = loaded.signatures["serving_default"](images=tf.constant(images, dtype=tf.string))
        top = out["probabilities"].numpy().argmax(axis=1)
        for (filename, label), row, index in zip(cases, out["classes"].numpy(), top, strict=True):
            if row[index].decode() != label:
                raise VerificationFailed(
                    f"version {plan.version} calls {filename} {row[index].decode()}, not {label}"
                )
