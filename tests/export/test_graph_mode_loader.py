"""Every kind of export restores in the graph-mode loader stock TF Serving uses.

TF Serving loads a version with the C++ `LoadSavedModel`: import the MetaGraph, run the saver's
restore op, then run signatures by their SignatureDef tensor names in a session. The local server
uses the TF2 Python loader instead, which restores objects another way, so an export can work
here and fail under TF Serving (Keras 3 variables: "Could not find variable ..."). The Python
twin of `LoadSavedModel` is `tf.compat.v1.saved_model.loader.load` in a v1 Session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from export.errors import VerificationFailed
from export.preprocessing import Preprocessing
from export.signatures import ServingModule, build_signatures, decode_and_resize
from export.verify import probe_classifier, run_graph_mode, verify_saved_model
from tests.export.images import encode

KINDS = ["tiny_tf_module", "keras3", "tf_keras2_h5", "tf1"]


def _inputs(size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Feeds by signature name: PNGs for serving_default, the same pixels for predict_pixels."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    images = np.array([encode(Image.fromarray(p), "PNG") for p in pixels], dtype=object)
    return {"serving_default": images, "predict_pixels": pixels.astype(np.float32)}


def _run_tf2(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    loaded = tf.saved_model.load(str(path))
    results = {}
    for name, value in feeds.items():
        function = loaded.signatures[name]
        (argument,) = function.structured_input_signature[1]
        outputs = function(**{argument: tf.constant(value)})
        results[name] = {key: tensor.numpy() for key, tensor in outputs.items()}
    return results


@pytest.mark.parametrize("kind", KINDS)
def test_both_signatures_run_in_the_graph_mode_loader(
    kind: str, exported: dict[str, Path], tiny_version: Path
) -> None:
    path = tiny_version if kind == "tiny_tf_module" else exported[kind]
    size = (32, 32) if kind == "tiny_tf_module" else (16, 16)
    feeds = _inputs(size)
    graph_mode = run_graph_mode(path, feeds)
    expected = _run_tf2(path, feeds)
    for name in feeds:
        np.testing.assert_allclose(
            graph_mode[name]["probabilities"], expected[name]["probabilities"], atol=1e-6
        )
        np.testing.assert_array_equal(graph_mode[name]["classes"], expected[name]["classes"])


def _corrupt_batch(size: tuple[int, int]) -> tuple[np.ndarray, list[bool]]:
    """Good PNGs and JPEGs between bodies no decoder takes, and whether each should decode."""
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    png = encode(Image.fromarray(pixels[0]), "PNG")
    jpeg = encode(Image.fromarray(pixels[1]).resize((64, 48)), "JPEG")
    rows = [
        (png, True),
        (png[: len(png) // 2], False),  # truncated PNG
        (jpeg, True),
        (jpeg[:200], False),  # a JPEG cut inside its first scan
        (b"", False),
        (b"GIF89a" + bytes(40), False),  # a GIF header and nothing after it
        (png, True),
    ]
    return np.array([data for data, _ in rows], dtype=object), [ok for _, ok in rows]


@pytest.mark.parametrize("loader", ["tf2", "graph_mode"])
def test_a_corrupt_image_fails_only_its_own_row(tiny_version: Path, loader: str) -> None:
    """Stock TF Serving runs a batch as one graph run: a decode error there would fail every
    request in the batch. The graph reports it per row instead (`decoded`), and the rows that
    decoded answer exactly as each image alone."""
    images, want = _corrupt_batch((32, 32))
    run = _run_tf2 if loader == "tf2" else run_graph_mode
    batch = run(tiny_version, {"serving_default": images})["serving_default"]
    assert batch["decoded"].tolist() == want
    for row, ok in enumerate(want):
        if ok:
            alone = run(tiny_version, {"serving_default": images[row : row + 1]})
            np.testing.assert_allclose(
                batch["probabilities"][row],
                alone["serving_default"]["probabilities"][0],
                atol=1e-6,
            )
            assert alone["serving_default"]["decoded"].tolist() == [True]


def test_an_empty_batch_decodes_to_nothing(tiny_version: Path) -> None:
    empty = np.array([], dtype=object)
    outputs = _run_tf2(tiny_version, {"serving_default": empty})["serving_default"]
    assert outputs["decoded"].shape == (0,)
    assert outputs["probabilities"].shape == (0, 3)


def test_verification_refuses_a_graph_a_corrupt_image_fails(
    tmp_path: Path, keras_file: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph as it was before `decoded`: one bad image failed the whole batch."""
    model = keras_file[1]
    preprocessing = Preprocessing(input_size=(16, 16), normalization="minus_one_to_one")
    labels = [f"label-{i}" for i in range(4)]
    module = ServingModule(model, labels, preprocessing)

    def all_or_nothing(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda data: decode_and_resize(data, (16, 16), "full"),
            images,
            fn_output_signature=tf.TensorSpec([16, 16, 3], tf.float32),
        )
        return {**module._classify(pixels), "decoded": tf.fill(tf.shape(images), True)}

    monkeypatch.setattr(module, "serve_images", all_or_nothing)
    tf.saved_model.save(module, str(tmp_path), signatures=build_signatures(module))
    sample = probe_classifier(model, preprocessing)
    with pytest.raises(VerificationFailed, match="the reloaded export cannot be run"):
        verify_saved_model(tmp_path, sample, labels)


def test_verification_refuses_what_tf_serving_cannot_restore(
    tmp_path: Path, keras_file: tuple[Path, Any]
) -> None:
    model = keras_file[1]
    preprocessing = Preprocessing(input_size=(16, 16), normalization="minus_one_to_one")
    labels = [f"label-{i}" for i in range(4)]
    module = ServingModule(model, labels, preprocessing)
    signatures = build_signatures(module)
    # The export as it was: the Keras 3 model tracked, the tf.Variables its graph reads not.
    del module.variables_read
    module.classifier = model
    tf.saved_model.save(module, str(tmp_path), signatures=signatures)
    sample = probe_classifier(model, preprocessing)
    with pytest.raises(VerificationFailed, match=r"graph-mode loader: Could not find variable"):
        verify_saved_model(tmp_path, sample, labels)
