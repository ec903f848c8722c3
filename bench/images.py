"""Photo-like test images, made here (no data set can be downloaded): 640x480 JPEGs of ~145 KB.

A "photo" is a smooth scene (a sky-to-ground gradient, soft blobs of colour, a few hard-edged
objects) plus fine texture and sensor noise: the mix of low- and high-frequency content that
makes real photos compress to ~3-4 bits per pixel, unlike flat test images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (640, 480)  # width, height: the original experiment's camera-sized JPEG
TARGET_BYTES = 145_000


def photo(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """One seeded photo-like RGB image."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = top + (bottom - top) * (y / height)[..., None]
    for _ in range(6):  # soft blobs of colour: out-of-focus background
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 200)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        pixels += weight * rng.uniform(-120, 120, 3)
    coarse = rng.normal(0, 1, (height // 4, width // 4, 3))
    texture = np.kron(coarse, np.ones((4, 4, 1)))[:height, :width]  # mid-frequency detail
    pixels += 18 * texture + rng.normal(0, 7, pixels.shape)  # plus sensor noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    _draw_objects(image, rng)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _draw_objects(image: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(4):  # hard-edged objects in the foreground
        x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
        box = (x0, y0, x0 + rng.uniform(30, 200), y0 + rng.uniform(30, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)


def encode(image: Image.Image, target_bytes: int = TARGET_BYTES) -> bytes:
    """The JPEG whose size is closest to `target_bytes` over qualities 50-98."""
    best = b""
    low, high = 50, 98
    while low <= high:  # size grows with quality: bisect
        quality = (low + high) // 2
        data = _jpeg(image, quality)
        if not best or abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if len(data) < target_bytes:
            low = quality + 1
        else:
            high = quality - 1
    return best


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` photo-like JPEGs in `folder` (photo-0.jpg ...), made once and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"photo-{seed}.jpg"
        if not path.exists():
            staging = path.with_suffix(".tmp")
            staging.write_bytes(encode(photo(seed)))
            staging.replace(path)
        paths.append(path)
    return paths
