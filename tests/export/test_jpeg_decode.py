"""The serving graph's JPEG decode options: "scaled" picks the DCT ratio from the header so the
decoded image still covers the input size, and stays close to the full decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.export.images import encode

tf = pytest.importorskip("tensorflow")


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize(
    ("width", "height", "size", "ratio"),
    [
        (640, 480, (224, 224), 2),  # 320x240 still covers 224x224; 160x120 would not
        (640, 480, (32, 32), 8),  # 80x60
        (300, 300, (224, 224), 1),
        (449, 449, (224, 224), 2),  # libjpeg rounds up: ceil(449 / 2) = 225
        (4000, 3000, (224, 224), 8),  # a 12 MP photo: 500x375
    ],
)
def test_ratio_is_the_largest_that_keeps_the_input_covered(
    width: int, height: int, size: tuple[int, int], ratio: int
) -> None:
    from export.signatures import dct_ratio_index, decode_jpeg_scaled

    data = tf.constant(encode(gradient(width, height), "JPEG", quality=90))
    assert (1, 2, 4, 8)[int(dct_ratio_index(data, size))] == ratio
    decoded = decode_jpeg_scaled(data, size)
    assert decoded.shape[:2] == (-(-height // ratio), -(-width // ratio))
    assert decoded.shape[0] >= size[0]
    assert decoded.shape[1] >= size[1]


def test_scaled_decode_stays_close_to_the_full_decode() -> None:
    from export.signatures import JPEG_FULL, JPEG_SCALED, decode_and_resize

    data = tf.constant(encode(gradient(640, 480), "JPEG", quality=90))
    full = decode_and_resize(data, (224, 224), JPEG_FULL).numpy()
    scaled = decode_and_resize(data, (224, 224), JPEG_SCALED).numpy()
    assert scaled.shape == full.shape == (224, 224, 3)
    assert float(np.mean(np.abs(scaled - full))) < 6.0  # of 255: smoothing, not a different image


def test_scaled_option_still_decodes_png_and_gif() -> None:
    from export.signatures import JPEG_SCALED, decode_and_resize

    for fmt in ("PNG", "GIF"):
        data = tf.constant(encode(Image.new("RGB", (50, 40), (200, 10, 10)), fmt))
        pixels = decode_and_resize(data, (32, 32), JPEG_SCALED).numpy()
        assert pixels.shape == (32, 32, 3)
        assert abs(float(pixels[..., 0].mean()) - 200) < 3


def test_unknown_decode_option_is_refused() -> None:
    from export.errors import InvalidPreprocessing
    from export.preprocessing import Preprocessing
    from export.signatures import ServingModule

    with pytest.raises(InvalidPreprocessing, match="jpeg_decode"):
        ServingModule(lambda x: x, ["a"], Preprocessing((8, 8), "raw"), jpeg_decode="fast")
