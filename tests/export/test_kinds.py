"""Every checkpoint kind, exported and checked against its source model on a fresh image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from export.checkpoint_types import Kind, LoadOptions
from export.checkpoints import detect_kind, load_checkpoint
from export.errors import (
    BadTensorName,
    CheckpointNotFound,
    LabelsMismatch,
    UnknownCheckpointKind,
    UnreadableCheckpoint,
    UsageError,
)
from export.exporter import ExportRequest, export
from export.servable import ServableSummary
from tests.export import sources
from tests.export.images import encode


def _served(version_dir: Path, pixels: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(version_dir))
    images = [encode(Image.fromarray(p), "PNG") for p in pixels]
    out = loaded.signatures["serving_default"](images=tf.constant(images, dtype=tf.string))
    return out["probabilities"].numpy()


def _pixels(size: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def _minus_one_to_one(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def _export(
    tmp_path: Path, checkpoint: Path, labels: Path | None, **kwargs: Any
) -> ServableSummary:
    request = ExportRequest(
        checkpoint=checkpoint, name="m", export_dir=tmp_path, labels_file=labels, **kwargs
    )
    return export(request)


def test_detects_kinds_from_paths(
    keras_file: Any, h5_file: Any, tf2_mobilenet: Any, tf1_ckpt: Any, tmp_path: Path
) -> None:
    tf2_prefix, tf1_prefix = tf2_mobilenet[0], tf1_ckpt[0]
    assert detect_kind(keras_file[0]) == (Kind.KERAS, keras_file[0])
    assert detect_kind(h5_file[0]) == (Kind.H5, h5_file[0])
    assert detect_kind(tf2_prefix) == (Kind.TF2, tf2_prefix)
    assert detect_kind(Path(f"{tf2_prefix}.index")) == (Kind.TF2, tf2_prefix)
    assert detect_kind(tf2_prefix.parent) == (Kind.TF2, tf2_prefix)
    assert detect_kind(tf1_prefix) == (Kind.TF1, tf1_prefix)
    assert detect_kind(Path(f"{tf1_prefix}.meta")) == (Kind.TF1, tf1_prefix)
    assert detect_kind(tf1_prefix.parent) == (Kind.TF1, tf1_prefix)  # Saver's `checkpoint` file
    renamed = tmp_path / "weights.bin"  # content, not suffix, decides
    renamed.write_bytes(h5_file[0].read_bytes())
    assert detect_kind(renamed) == (Kind.H5, renamed)


def test_detection_errors(tmp_path: Path, tiny_version: Path) -> None:
    with pytest.raises(CheckpointNotFound):
        detect_kind(tmp_path / "nope.keras")
    with pytest.raises(CheckpointNotFound):
        detect_kind(tmp_path / "ckpt-3.index")
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(UnknownCheckpointKind):
        detect_kind(junk)
    with pytest.raises(UnknownCheckpointKind, match="already a SavedModel"):
        detect_kind(tiny_version)
    with pytest.raises(UnknownCheckpointKind, match="checkpoint"):
        detect_kind(tmp_path)


def test_keras_file(tmp_path: Path, keras_file: Any, labels4: Path) -> None:
    path, model = keras_file
    summary = _export(tmp_path, path, labels4)
    assert summary.input_size == (16, 16)
    pixels = _pixels(16)
    expected = model(_minus_one_to_one(pixels), training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)
    meta = json.loads((summary.path / "assets.extra/dynoserve.json").read_text())
    assert meta["source"] == {"kind": "keras", "path": str(path)}
    assert meta["labels"] == [f"label-{i}" for i in range(4)]


def test_h5_in_inference_mode(tmp_path: Path, h5_file: Any, labels4: Path) -> None:
    path, model = h5_file
    summary = _export(tmp_path, path, labels4, normalization="zero_to_one")
    pixels = _pixels(16)
    expected = model(pixels.astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)


def test_keras3_h5(tmp_path: Path, src: Path, labels4: Path) -> None:
    path, model = sources.write_keras3_h5(src)
    assert detect_kind(path) == (Kind.H5, path)
    summary = _export(tmp_path, path, labels4)
    pixels = _pixels(16)
    expected = model(_minus_one_to_one(pixels), training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)
    meta = json.loads((summary.path / "assets.extra/dynoserve.json").read_text())
    assert meta["source"] == {"kind": "h5", "path": str(path)}


def test_kind_keras_reads_an_h5_with_keras_3(
    tmp_path: Path, src: Path, h5_file: Any, labels4: Path
) -> None:
    keras3_h5, keras3_model = sources.write_keras3_h5(src)
    pixels = _pixels(16)
    for path, model in ((keras3_h5, keras3_model), h5_file):
        summary = _export(tmp_path / path.stem, path, labels4, kind=Kind.KERAS)
        expected = model(_minus_one_to_one(pixels), training=False).numpy()
        np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)


@pytest.mark.parametrize("keras_version", ["3.15.1", "2.15.0"])
def test_h5_error_names_both_attempts(
    tmp_path: Path, src: Path, labels4: Path, keras_version: str
) -> None:
    path = sources.write_h5_nobody_reads(src, keras_version)
    with pytest.raises(UnreadableCheckpoint) as error:
        _export(tmp_path, path, labels4)
    message = str(error.value)
    assert f"written by Keras {keras_version}" in message
    assert "tried with Keras 3." in message
    assert "tried with tf_keras 2." in message
    assert "NoSuchLayer" in message
    # The Keras that wrote the file is tried first.
    keras3_first = message.index("tried with Keras 3.") < message.index("tried with tf_keras")
    assert keras3_first == keras_version.startswith("3")


def test_tf2_mobilenet_from_flags(tmp_path: Path, tf2_mobilenet: Any, labels4: Path) -> None:
    prefix, model = tf2_mobilenet
    load = LoadOptions(architecture="mobilenet_v1", alpha=0.25, input_size=(32, 32))
    # The directory form, and the class count taken from the labels.
    summary = _export(tmp_path, prefix.parent, labels4, load=load, version=7)
    assert summary.path == tmp_path / "m" / "7"
    pixels = _pixels(32)
    expected = model(_minus_one_to_one(pixels), training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)


def test_tf2_tf_keras_mobilenet(src: Path) -> None:
    # Loader-level: exporting a tf_keras model is covered by the .h5 test; tracing a second
    # MobileNet for save would only add half a minute.
    prefix, model = sources.write_tf2_tf_keras_mobilenet(src)
    load = LoadOptions(architecture="mobilenet_v1", alpha=0.25, input_size=(32, 32), classes=4)
    loaded = load_checkpoint(Kind.TF2, prefix, load)
    batch = _minus_one_to_one(_pixels(32))
    np.testing.assert_allclose(
        loaded.classifier(batch, training=False).numpy(), model(batch, training=False).numpy()
    )


def test_tf2_mobilenet_from_spec_file(tf2_mobilenet: Any, src: Path) -> None:
    prefix, model = tf2_mobilenet
    load = LoadOptions(architecture=str(sources.mobilenet_spec_file(src)))
    loaded = load_checkpoint(Kind.TF2, prefix, load)
    assert loaded.input_size == (32, 32)
    batch = _minus_one_to_one(_pixels(32))
    np.testing.assert_allclose(
        loaded.classifier(batch, training=False).numpy(), model(batch, training=False).numpy()
    )


def test_tf2_with_keras_config(tmp_path: Path, src: Path, labels4: Path) -> None:
    prefix, config, model = sources.write_tf2_with_config(src)
    summary = _export(tmp_path, prefix, labels4, load=LoadOptions(architecture=str(config)))
    pixels = _pixels(16)
    expected = model(_minus_one_to_one(pixels), training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)


def test_tf2_wrong_architecture_is_refused(
    tmp_path: Path, tf2_mobilenet: Any, labels4: Path
) -> None:
    load = LoadOptions(architecture="mobilenet_v1", alpha=0.5, input_size=(32, 32))
    with pytest.raises(UnreadableCheckpoint, match="do not fit"):
        _export(tmp_path, tf2_mobilenet[0], labels4, load=load)
    load = LoadOptions(
        architecture="mobilenet_v1", alpha=0.25, input_size=(32, 32), checkpoint_key="net"
    )
    with pytest.raises(UnreadableCheckpoint, match="no object named 'net'"):
        _export(tmp_path, tf2_mobilenet[0], labels4, load=load)
    with pytest.raises(UsageError, match="--architecture"):
        _export(tmp_path, tf2_mobilenet[0], labels4)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_tf1_meta_graph(tmp_path: Path, tf1_ckpt: Any, labels4: Path) -> None:
    prefix, reference = tf1_ckpt
    load = LoadOptions(input_tensor="input:0", output_tensor="probs:0")
    summary = _export(tmp_path, prefix, labels4, load=load, normalization="raw")
    assert summary.input_size == (16, 16)
    pixels = _pixels(16)
    np.testing.assert_allclose(
        _served(summary.path, pixels), reference(pixels.astype(np.float32)), atol=1e-5
    )


def test_tf1_logits_with_softmax(tmp_path: Path, tf1_ckpt: Any, labels4: Path) -> None:
    prefix, reference = tf1_ckpt
    load = LoadOptions(input_tensor="input", output_tensor="logits")
    summary = _export(tmp_path, prefix, labels4, load=load, normalization="raw", softmax=True)
    pixels = _pixels(16, seed=5)
    np.testing.assert_allclose(
        _served(summary.path, pixels), reference(pixels.astype(np.float32)), atol=1e-5
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "error"),
    [
        ("nope:0", "probs:0", BadTensorName),
        ("input:0", "missing:0", BadTensorName),
        ("dense/kernel:0", "probs:0", BadTensorName),
        (None, "probs:0", UsageError),
    ],
)
def test_tf1_bad_tensor_names(
    tmp_path: Path, tf1_ckpt: Any, labels4: Path, inputs: Any, outputs: str, error: type
) -> None:
    load = LoadOptions(input_tensor=inputs, output_tensor=outputs)
    with pytest.raises(error):
        _export(tmp_path, tf1_ckpt[0], labels4, load=load)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_labels_count_must_match(tmp_path: Path, keras_file: Any, src: Path) -> None:
    with pytest.raises(LabelsMismatch, match="3 labels but the model has 4 outputs"):
        _export(tmp_path, keras_file[0], sources.write_labels(src, 3))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_versions_count_up(tmp_path: Path, keras_file: Any) -> None:
    first = _export(tmp_path, keras_file[0], None)
    second = _export(tmp_path, keras_file[0], None)
    assert (first.version, second.version) == (1, 2)
    assert first.labels == ("class_0", "class_1", "class_2", "class_3")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]


def test_unreadable_keras_file(tmp_path: Path, labels4: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UnreadableCheckpoint):
        _export(tmp_path, broken, labels4)


def test_dynamic_input_size_and_logits_warning(tmp_path: Path, labels4: Path) -> None:
    import keras

    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),  # logits
        ]
    )
    path = tmp_path / "dynamic.keras"
    model.save(path)
    with pytest.raises(UsageError, match="pass --input-size"):
        _export(tmp_path / "out", path, labels4)
    messages: list[str] = []
    request = ExportRequest(
        checkpoint=path,
        name="m",
        export_dir=tmp_path / "out",
        labels_file=labels4,
        load=LoadOptions(input_size=(24, 40)),
    )
    summary = export(request, messages.append)
    assert summary.input_size == (24, 40)
    assert any("--softmax if logits" in m for m in messages)


def test_weights_only_h5_with_architecture(tmp_path: Path, src: Path, labels4: Path) -> None:
    weights, config, model = sources.write_h5_weights_only(src)
    assert detect_kind(weights) == (Kind.H5, weights)
    with pytest.raises(UsageError, match="holds weights only"):
        _export(tmp_path, weights, labels4)
    summary = _export(tmp_path, weights, labels4, load=LoadOptions(architecture=str(config)))
    pixels = _pixels(16)
    expected = model(_minus_one_to_one(pixels), training=False).numpy()
    np.testing.assert_allclose(_served(summary.path, pixels), expected, atol=1e-5)
