"""Tiny source models of every checkpoint kind, built the way their own tools write them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

SIZE = 16
CLASSES = 4


def keras3_model() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def write_keras(directory: Path) -> tuple[Path, Any]:
    model = keras3_model()
    path = directory / "model.keras"
    model.save(path)
    return path, model


def write_h5(directory: Path) -> tuple[Path, Any]:
    """A tf.keras 2 model saved the legacy way, with a layer whose inference mode matters."""
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(4, 3, activation="relu", input_shape=(SIZE, SIZE, 3)),
            tf_keras.layers.Dropout(0.5),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    path = directory / "model.h5"
    with warnings.catch_warnings():
        # Writing the legacy format is the point: it is what old training scripts left behind.
        warnings.filterwarnings("ignore", "You are saving your model as an HDF5", UserWarning)
        model.save(path)
    return path, model


def write_keras3_h5(directory: Path) -> tuple[Path, Any]:
    """A Keras 3 model saved to .h5, as `model.save("model.h5")` with TF 2.16+ does."""
    model = keras3_model()
    path = directory / "keras3.h5"
    model.save(path)  # Keras 3 writes its own config (`batch_shape`) into the legacy format
    return path, model


def write_h5_nobody_reads(directory: Path, keras_version: str) -> Path:
    """A full-model .h5 whose architecture names a layer no Keras has."""
    import h5py

    path = directory / f"unknown-layer-{keras_version}.h5"
    config = {"class_name": "Sequential", "config": {"layers": [{"class_name": "NoSuchLayer"}]}}
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = keras_version
        handle.attrs["backend"] = "tensorflow"
    return path


def write_tf2_mobilenet(directory: Path) -> tuple[Path, Any]:
    """MobileNet v1 alpha 0.25 at 32x32 (its smallest input), weights in an object checkpoint."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=CLASSES
    )
    # Random BatchNorm statistics, so a restore that silently kept the defaults would show.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shift = np.random.default_rng(0).normal(0, 0.1, layer.moving_mean.shape)
            layer.moving_mean.assign(shift)
    # As a training loop would: the manager also writes the `checkpoint` state file.
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(directory / "train"), max_to_keep=2
    )
    return Path(manager.save()), model


def write_tf2_tf_keras_mobilenet(directory: Path) -> tuple[Path, Any]:
    """The TF 2.x-era way: a tf.keras 2 MobileNet in tf.train.Checkpoint(model=...)."""
    import tf_keras

    tf_keras.utils.set_random_seed(5)
    model = tf_keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=CLASSES
    )
    prefix = tf.train.Checkpoint(model=model).write(str(directory / "tfk" / "ckpt"))
    return Path(prefix), model


def write_tf2_with_config(directory: Path) -> tuple[Path, Path, Any]:
    """A Keras 3 model's weights in an object checkpoint plus its model.to_json()."""
    model = keras3_model()
    prefix = tf.train.Checkpoint(model=model).write(str(directory / "config" / "ckpt"))
    config = directory / "config" / "model.json"
    config.write_text(model.to_json())
    return Path(prefix), config, model


def write_tf1(directory: Path) -> tuple[Path, Any]:
    """A TF1 graph (placeholder, variables, logits, softmax) saved by tf.compat.v1.train.Saver.

    Returns the prefix and a numpy function computing the same probabilities.
    """
    v1 = tf.compat.v1
    rng = np.random.default_rng(4)
    kernel = rng.normal(0, 0.2, (SIZE * SIZE * 3, CLASSES)).astype(np.float32)
    bias = rng.normal(0, 0.1, CLASSES).astype(np.float32)
    prefix = directory / "tf1" / "model.ckpt"
    with tf.Graph().as_default(), v1.Session() as session:
        images = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="input")
        weights = v1.get_variable("dense/kernel", initializer=kernel)
        offsets = v1.get_variable("dense/bias", initializer=bias)
        logits = tf.matmul(tf.reshape(images, [-1, SIZE * SIZE * 3]), weights) + offsets
        tf.identity(logits, name="logits")
        tf.nn.softmax(logits, name="probs")
        session.run(v1.global_variables_initializer())
        v1.train.Saver().save(session, str(prefix))

    def reference(batch: np.ndarray) -> np.ndarray:
        logits = batch.reshape(len(batch), -1) @ kernel + bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return prefix, reference


def write_labels(directory: Path, count: int = CLASSES) -> Path:
    path = directory / f"labels{count}.txt"
    path.write_text("".join(f"label-{i}\n" for i in range(count)))
    return path


def mobilenet_spec_file(directory: Path) -> Path:
    path = directory / "mobilenet.json"
    spec = {"architecture": "mobilenet_v1", "alpha": 0.25, "input_size": [32, 32], "classes": 4}
    path.write_text(json.dumps(spec))
    return path


def write_h5_weights_only(directory: Path) -> tuple[Path, Path, Any]:
    """tf.keras 2 `save_weights` to .h5 (what ModelCheckpoint(save_weights_only=True) left)."""
    import tf_keras

    tf_keras.utils.set_random_seed(6)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(4, 3, activation="relu", input_shape=(SIZE, SIZE, 3)),
            tf_keras.layers.GlobalAveragePooling2D(),
            tf_keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    weights = directory / "weights-only.h5"
    model.save_weights(weights)
    config = directory / "weights-only.json"
    config.write_text(model.to_json())
    return weights, config, model
