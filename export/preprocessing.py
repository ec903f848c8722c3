"""How a servable turns 0..255 RGB pixels into the classifier's input, recorded in the export.

Every supported normalisation is a per-channel affine map `x * scale + offset`, which is how
the graph applies it and how `dynoserve.json` records it, so a client could reproduce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from export.errors import InvalidPreprocessing

NORMALIZATIONS = ("minus_one_to_one", "zero_to_one", "mean_std", "raw")

# The largest input side we accept: far beyond any classifier, small enough to catch typos.
_MAX_SIDE = 4096


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalisation of a classifier, recorded in assets.extra/dynoserve.json."""

    input_size: tuple[int, int]
    """(height, width) the image is resized to (bilinear) before normalisation."""
    normalization: str
    """One of NORMALIZATIONS: [-1, 1], [0, 1], (x - mean) / std, or raw 0..255."""
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Per-channel RGB mean for "mean_std", in 0..255 units."""
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-channel RGB standard deviation for "mean_std", in 0..255 units."""

    def __post_init__(self) -> None:
        _check_size(self.input_size)
        if self.normalization not in NORMALIZATIONS:
            raise InvalidPreprocessing(
                f"unknown normalization {self.normalization!r}; "
                f"choose one of {', '.join(NORMALIZATIONS)}"
            )
        _check_triple("mean", self.mean, positive=False)
        _check_triple("std", self.std, positive=True)

    def scale_offset(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (scale, offset) with normalised = pixel * scale + offset."""
        if self.normalization == "minus_one_to_one":
            return (1 / 127.5,) * 3, (-1.0,) * 3
        if self.normalization == "zero_to_one":
            return (1 / 255,) * 3, (0.0,) * 3
        if self.normalization == "mean_std":
            scale = tuple(1 / s for s in self.std)
            return scale, tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))
        return (1.0,) * 3, (0.0,) * 3

    def to_json(self) -> dict[str, Any]:
        """The `normalization` object of dynoserve.json."""
        scale, offset = self.scale_offset()
        record: dict[str, Any] = {"kind": self.normalization}
        if self.normalization == "mean_std":
            record.update(mean=list(self.mean), std=list(self.std))
        record.update(scale=list(scale), offset=list(offset))
        return record


def _check_size(size: tuple[int, int]) -> None:
    ok = (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        and all(1 <= v <= _MAX_SIDE for v in size)
    )
    if not ok:
        raise InvalidPreprocessing(
            f"input_size must be (height, width), integers in 1..{_MAX_SIDE}; got {size!r}"
        )


def _check_triple(name: str, values: tuple[float, ...], *, positive: bool) -> None:
    if len(values) != 3 or not all(math.isfinite(float(v)) for v in values):
        raise InvalidPreprocessing(f"{name} must be three finite numbers (R, G, B); got {values!r}")
    if positive and min(values) <= 0:
        raise InvalidPreprocessing(f"{name} values must be > 0; got {values!r}")
