"""The servable format (docs/model-format.md) as write_servable and write_tiny_model write it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from export.errors import (
    InvalidLabels,
    InvalidModelName,
    InvalidPreprocessing,
    InvalidVersion,
    LabelsMismatch,
    VerificationFailed,
    VersionExists,
)
from export.servable import Preprocessing, ServableSpec, write_servable
from export.testing import TinyConvNet, write_tiny_model
from export.verify import probe_classifier
from export.warmup import read_warmup_file
from modelrepo.exportrecord import describe_folder, read_record
from tests.export.images import encode, solid

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)
TINY_PREP = Preprocessing(input_size=(32, 32), normalization="minus_one_to_one")


def _signature_defs(version_dir: Path) -> Any:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    (graph,) = saved.meta_graphs
    assert list(graph.meta_info_def.tags) == ["serve"]
    return graph.signature_def


def _classify(loaded: Any, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    out = loaded.signatures["serving_default"](images=tf.constant(images, dtype=tf.string))
    return out["probabilities"].numpy(), out["classes"].numpy()


def test_layout_matches_tf_serving(tiny_version: Path) -> None:
    assert tiny_version.name == "1"
    for name in (
        "saved_model.pb",
        "variables/variables.index",
        "assets/labels.txt",
        "assets.extra/tf_serving_warmup_requests",
        "assets.extra/dynoserve.json",
    ):
        assert (tiny_version / name).is_file(), name
    assert (tiny_version / "assets/labels.txt").read_text() == "cat\ndog\nbird\n"
    assert not [p for p in tiny_version.parent.iterdir() if p.name.startswith(".")]


def test_signature_defs(tiny_version: Path) -> None:
    defs = _signature_defs(tiny_version)
    images, pixels = defs["serving_default"], defs["predict_pixels"]
    assert set(images.outputs) == {"probabilities", "classes", "decoded"}
    assert set(pixels.outputs) == {"probabilities", "classes"}
    assert images.outputs["decoded"].dtype == tf.bool.as_datatype_enum
    assert [d.size for d in images.outputs["decoded"].tensor_shape.dim] == [-1]
    for sig in (images, pixels):
        assert sig.method_name == "tensorflow/serving/predict"
        assert sig.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
        assert sig.outputs["classes"].dtype == tf.string.as_datatype_enum
        assert [d.size for d in sig.outputs["probabilities"].tensor_shape.dim] == [-1, 3]
        assert [d.size for d in sig.outputs["classes"].tensor_shape.dim] == [-1, 3]
    assert images.inputs["images"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in images.inputs["images"].tensor_shape.dim] == [-1]
    assert pixels.inputs["pixels"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in pixels.inputs["pixels"].tensor_shape.dim] == [-1, 32, 32, 3]


def test_metadata(tiny_version: Path) -> None:
    meta = json.loads((tiny_version / "assets.extra/dynoserve.json").read_text())
    assert meta["format"] == 1
    assert (meta["name"], meta["version"]) == ("tiny", 1)
    assert meta["input_size"] == [32, 32]
    assert meta["normalization"]["kind"] == "minus_one_to_one"
    assert meta["normalization"]["offset"] == [-1.0] * 3
    assert meta["labels"] == ["cat", "dog", "bird"]
    assert meta["source"]["kind"] == "tiny"
    assert meta["created"].endswith("+00:00")


def test_export_record_lists_every_verified_file(tiny_version: Path) -> None:
    """make publish proves the files it uploads are these (issue 10)."""
    record = read_record(tiny_version)
    assert record is not None
    assert record.verified
    assert {"saved_model.pb", "variables/variables.index"} <= record.files.keys()
    assert record.differences(describe_folder(tiny_version, verified=True)) == []


def test_warmup_file_is_a_serving_default_request(tiny_version: Path, tiny_loaded: Any) -> None:
    (log,) = read_warmup_file(tiny_version / "assets.extra/tf_serving_warmup_requests")
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["images"]
    images = tf.make_ndarray(request.inputs["images"])
    assert images.shape == (1,)
    probabilities, _ = _classify(tiny_loaded, list(images))
    assert probabilities.shape == (1, 3)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("BMP", {}), ("GIF", {})],
)
def test_decodes_every_format(tiny_loaded: Any, fmt: str, options: dict[str, Any]) -> None:
    images = [encode(solid(colour), fmt, **options) for colour in (RED, GREEN, BLUE)]
    probabilities, classes = _classify(tiny_loaded, images)
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    top = [row[i].decode() for row, i in zip(classes, probabilities.argmax(axis=1), strict=True)]
    assert top == ["cat", "dog", "bird"]


def test_animated_gif_uses_first_frame(tiny_loaded: Any) -> None:
    frames = [solid(GREEN), solid(RED), solid(BLUE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(gif)), "n_frames", 1) == 3
    probabilities, _ = _classify(tiny_loaded, [gif])
    assert probabilities.argmax() == 1  # green


def test_pixels_and_images_agree(tiny_loaded: Any) -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    images = [encode(Image.fromarray(p), "PNG") for p in pixels]
    by_images, _ = _classify(tiny_loaded, images)
    out = tiny_loaded.signatures["predict_pixels"](pixels=tf.constant(pixels, tf.float32))
    np.testing.assert_allclose(out["probabilities"].numpy(), by_images, atol=1e-6)


def test_resizes_any_input_size(tiny_loaded: Any) -> None:
    big, small = solid(BLUE, (640, 480)), solid(BLUE, (5, 3))
    probabilities, _ = _classify(tiny_loaded, [encode(big, "PNG"), encode(small, "PNG")])
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-5)


def test_empty_batch(tiny_loaded: Any) -> None:
    # oneDNN's convolution (on by default on AVX-512 VNNI CPUs) mishandled zero rows: the
    # export must answer the same on every CPU (CI runs this with TF_ENABLE_ONEDNN_OPTS=1 and 0).
    probabilities, classes = _classify(tiny_loaded, [])
    assert probabilities.shape == (0, 3)
    assert classes.shape == (0, 3)
    pixels = tiny_loaded.signatures["predict_pixels"](pixels=tf.zeros([0, 32, 32, 3]))
    assert pixels["probabilities"].shape == (0, 3)
    assert pixels["classes"].shape == (0, 3)
    assert pixels["probabilities"].dtype == tf.float32


def test_garbage_is_reported_as_not_decoded(tiny_loaded: Any) -> None:
    serve = tiny_loaded.signatures["serving_default"]
    outputs = serve(images=tf.constant([b"this is not an image"]))
    assert outputs["decoded"].numpy().tolist() == [False]
    assert outputs["probabilities"].shape == (1, 3)


def test_labels_mismatch_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(LabelsMismatch, match="2 labels given but the classifier has 3 outputs"):
        write_servable(
            ServableSpec(
                TinyConvNet(3), ["a", "b"], TINY_PREP, tmp_path / "m" / "1", "m", 1, source={}
            )
        )
    assert not (tmp_path / "m" / "1").exists()
    assert not (tmp_path / "m").exists()


def test_existing_version_refused_unless_overwrite(tmp_path: Path) -> None:
    target = write_tiny_model(tmp_path, "m", 1)
    before = (target / "saved_model.pb").read_bytes()
    with pytest.raises(VersionExists):
        write_tiny_model(tmp_path, "m", 1)
    assert (target / "saved_model.pb").read_bytes() == before
    spec = ServableSpec(
        TinyConvNet(2, seed=3),
        ["yes", "no"],
        TINY_PREP,
        target,
        name="m",
        version=1,
        source={"kind": "tiny", "path": "-"},
        overwrite=True,
    )
    summary = write_servable(spec)
    assert (target / "assets/labels.txt").read_text() == "yes\nno\n"
    assert summary.labels == ("yes", "no")
    assert summary.max_abs_diff is not None
    assert summary.max_abs_diff <= 1e-4
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


class _GraphDiffers(tf.Module):
    """Answers differently when traced than when run eagerly: an export that cannot match."""

    def __call__(self, batch: tf.Tensor) -> tf.Tensor:
        rows = tf.shape(batch)[0]
        first = 1.0 if tf.executing_eagerly() else 0.0
        return tf.tile(tf.constant([[first, 1.0 - first]]), tf.stack([rows, 1]))


def test_verification_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(VerificationFailed, match="differ from the source model"):
        write_servable(
            ServableSpec(_GraphDiffers(), ["a", "b"], TINY_PREP, tmp_path / "m" / "1", "m", 1, {})
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.0])
def test_version_must_be_positive_integer(tmp_path: Path, version: Any) -> None:
    with pytest.raises(InvalidVersion):
        write_tiny_model(tmp_path, "m", version)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 200])
def test_model_name_is_one_safe_segment(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidModelName):
        write_tiny_model(tmp_path, name, 1)


@pytest.mark.parametrize("labels", [[], ["a", "a", "b"], ["a", "", "b"], ["a\nb", "c", "d"]])
def test_bad_labels(tmp_path: Path, labels: list[str]) -> None:
    with pytest.raises(InvalidLabels):
        write_tiny_model(tmp_path, "m", 1, labels=labels)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": (0, 32), "normalization": "raw"},
        {"input_size": (32,), "normalization": "raw"},
        {"input_size": (32, 32), "normalization": "imagenet"},
        {"input_size": (32, 32), "normalization": "mean_std", "std": (1.0, 0.0, 1.0)},
        {"input_size": (32, 32), "normalization": "mean_std", "mean": (1.0, float("nan"), 1.0)},
    ],
)
def test_bad_preprocessing(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidPreprocessing):
        Preprocessing(**kwargs)


def test_normalisations_are_affine() -> None:
    pixels = np.array([0.0, 127.5, 255.0])
    expect = {
        "minus_one_to_one": [-1.0, 0.0, 1.0],
        "zero_to_one": [0.0, 0.5, 1.0],
        "raw": [0.0, 127.5, 255.0],
    }
    for kind, want in expect.items():
        scale, offset = Preprocessing((8, 8), kind).scale_offset()
        np.testing.assert_allclose(pixels * scale[0] + offset[0], want, atol=1e-9)
    prep = Preprocessing((8, 8), "mean_std", mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0))
    scale, offset = prep.scale_offset()
    np.testing.assert_allclose(np.array(scale) * 180.0 + offset, [1.0, 1.4, 2.0])


def test_grey_alpha_and_16_bit_images(tiny_loaded: Any) -> None:
    grey = Image.new("L", (20, 20), 156)
    rgba = Image.new("RGBA", (20, 20), (*BLUE, 128))
    deep = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))  # 16-bit greyscale PNG
    images = [encode(grey, "PNG"), encode(rgba, "PNG"), encode(deep, "PNG")]
    probabilities, _ = _classify(tiny_loaded, images)
    assert probabilities.shape == (3, 3)
    assert probabilities[1].argmax() == 2  # alpha dropped, blue stays blue
    np.testing.assert_allclose(probabilities[0], probabilities[2], atol=1e-3)  # 40000/257 = 156


class _CountsEagerCalls(TinyConvNet):
    """TinyConvNet that counts the calls run eagerly (probes), not those traced for the graph."""

    def __init__(self) -> None:
        super().__init__(3)
        self.eager_calls = 0

    def __call__(self, batch: tf.Tensor) -> tf.Tensor:
        if tf.executing_eagerly():
            self.eager_calls += 1
        return super().__call__(batch)


def test_a_probed_model_is_not_probed_again(tmp_path: Path) -> None:
    model = _CountsEagerCalls()
    sample = probe_classifier(model, TINY_PREP)
    spec = ServableSpec(model, ["a", "b", "c"], TINY_PREP, tmp_path / "m" / "1", "m", 1, {})
    summary = write_servable(spec, sample=sample)
    assert model.eager_calls == 1
    assert summary.max_abs_diff is not None
    assert summary.max_abs_diff <= 1e-4
