"""Test images encoded in memory with Pillow (independent of the TensorFlow code under test)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """Encode a PIL image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A solid-colour RGB image (width, height)."""
    return Image.new("RGB", size, colour)
