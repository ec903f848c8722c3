"""What the demo model is: its name, input, classes and training plan.

No TensorFlow here: `python -m export.demo` reads it before deciding whether to train at all,
and training.py (the library that does the training) reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass

NAME = "shapes"
INPUT_SIZE = (32, 32)
NORMALIZATION = "minus_one_to_one"
COLOURS = ("red", "green", "blue")
REQUIRED_ACCURACY = 0.95


@dataclass(frozen=True)
class Plan:
    """One demo version: which classes, how many images, how long to train at most."""

    version: int
    shapes: tuple[str, ...]
    per_class: int
    max_epochs: int
    seed: int


PLANS = (
    Plan(version=1, shapes=("circle", "square"), per_class=320, max_epochs=10, seed=1),
    Plan(version=2, shapes=("circle", "square", "triangle"), per_class=240, max_epochs=6, seed=2),
)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and checks; tests use a smaller one."""

    plans: tuple[Plan, ...] = PLANS
    """The versions to train, in order; each starts from the previous one's features."""
    required_accuracy: float = REQUIRED_ACCURACY
    """Held-out accuracy below which a version is not exported."""
    check_samples: bool = True
    """Classify the sample images with the exports and fail on a wrong answer."""
    validation_per_class: int = 40
    """Images per class for early stopping."""
    test_per_class: int = 100
    """Held-out images per class for the reported accuracy."""
