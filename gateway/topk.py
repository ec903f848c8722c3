"""Ranking: each image's row of scores from the model becomes its k best classes."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.client import PredictOutput
from gateway.errors import ModelServerError, UndecodableImage
from gateway.interface import ItemResult, Score


def top_k(scores: Sequence[float], classes: Sequence[str] | None, k: int) -> list[Score]:
    """The k best classes, best first (ties keep class order)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [
        Score(label=classes[i] if classes and i < len(classes) else str(i), class_id=i, score=s)
        for i, s in ((i, float(scores[i])) for i in order)
    ]


def rank(output: PredictOutput, indices: list[int], items: list[ItemResult], k: int) -> None:
    """Give each image that was sent its top k: row n of `output` belongs to items[indices[n]];
    an image the model server reports it could not decode gets that error and no predictions
    (its row's scores are meaningless). decode_outputs makes `decoded` as long as `scores`."""
    if len(output.scores) != len(indices):
        raise ModelServerError(
            f"model answered {len(output.scores)} rows for {len(indices)} images"
        )
    for row, index in enumerate(indices):
        if output.decoded is not None and not output.decoded[row]:
            items[index].error = UndecodableImage(
                "the model server could not decode the image: its data is corrupt or truncated"
            )
            continue
        classes = output.classes[row] if output.classes else None
        items[index].predictions = top_k(output.scores[row], classes, k)
