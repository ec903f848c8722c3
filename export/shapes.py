"""A labelled image set the project generates itself: coloured shapes on noisy backgrounds.

No data set can be downloaded here, so the demo classifier learns "red circle" from pictures
drawn with numpy: random position and size, jittered colours, textured background, noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CANVAS = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
}
_COLOUR_JITTER = 30
_NOISE_SIGMA = 12.0

Mask = Callable[[np.ndarray, np.ndarray, float, float, float], np.ndarray]


def _circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def _square(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    side = r * 0.9  # a square of the circle's area looks about as big
    return (np.abs(x - cx) <= side) & (np.abs(y - cy) <= side)


def _triangle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    top, bottom = cy - r, cy + r * 0.8
    half_width = (y - top) / (bottom - top) * r * 1.1
    return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)


SHAPES: dict[str, Mask] = {"circle": _circle, "square": _square, "triangle": _triangle}


@dataclass(frozen=True)
class Dataset:
    """uint8 images [N, CANVAS, CANVAS, 3] and integer labels [N] indexing `classes`."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


def class_names(colours: Sequence[str], shapes: Sequence[str]) -> tuple[str, ...]:
    """ "red-circle", ... in a fixed order: the output order of the classifier."""
    return tuple(f"{colour}-{shape}" for shape in shapes for colour in colours)


def draw(
    name: str, rng: np.random.Generator, size: int = CANVAS, radius: float | None = None
) -> np.ndarray:
    """One image of class `name` ("<colour>-<shape>"), uint8 [size, size, 3].

    `radius` (a fraction of the size) fixes the shape's size; by default it varies.
    """
    colour, shape = name.split("-")
    image = _background(rng, size)
    radius = (radius if radius is not None else rng.uniform(0.18, 0.34)) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    mask = SHAPES[shape](x, y, cx, cy, radius)
    tint = np.array(COLOURS[colour]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    image[mask] = tint
    image += rng.normal(0.0, _NOISE_SIGMA, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A greyish gradient, light or dark, so colour and not brightness tells classes apart."""
    level = rng.uniform(60, 200)
    tilt = rng.uniform(-40, 40, size=2)
    ramp = np.linspace(-0.5, 0.5, size)
    plane = level + tilt[0] * ramp[None, :] + tilt[1] * ramp[:, None]
    tint = rng.uniform(-12, 12, size=3)
    return plane[:, :, None] + tint[None, None, :]


def generate(classes: Sequence[str], per_class: int, seed: int) -> Dataset:
    """`per_class` images of each class, shuffled; the same seed gives the same images."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), per_class)
    rng.shuffle(labels)
    images = np.stack([draw(classes[int(label)], rng) for label in labels])
    return Dataset(images=images, labels=labels, classes=tuple(classes))
