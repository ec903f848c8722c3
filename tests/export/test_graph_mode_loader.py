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
from export.signatures import ServingModule, build_signatures
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
