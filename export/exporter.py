"""From a checkpoint on disk to a verified servable version: the work behind `make export`.

Knows nothing of argparse: the CLI fills an ExportRequest; tests can call `export` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.checkpoint_types import Kind, LoadedModel, LoadOptions
from export.checkpoints import detect_kind, load_checkpoint
from export.errors import InvalidLabels, LabelsMismatch, UsageError, VersionExists
from export.preprocessing import Preprocessing
from export.progress import Progress, quiet
from export.repository import next_version, read_labels_file
from export.servable import (
    ServableSpec,
    ServableSummary,
    check_model_name,
    check_version,
    write_servable,
)
from export.signatures import Classifier, run_classifier
from export.verify import Sample, probe_classifier

# Rows of a probability output sum to 1 within this; anything else is probably logits.
_PROBABILITY_SUM_SLACK = 1e-3


@dataclass(frozen=True)
class ExportRequest:
    """One export, as the command line describes it."""

    checkpoint: Path
    name: str
    export_dir: Path
    version: int | None = None
    labels_file: Path | None = None
    kind: Kind | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    normalization: str = "minus_one_to_one"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    softmax: bool = False
    warmup_image: Path | None = None
    force: bool = False
    tolerance: float = 1e-4


def export(request: ExportRequest, progress: Progress = quiet) -> ServableSummary:
    """Run one export; returns the ServableSummary. Foreseen failures raise ExportError."""
    check_model_name(request.name)
    model_dir = request.export_dir / request.name
    version = check_version(request.version or next_version(model_dir))
    target = model_dir / str(version)
    if target.exists() and not request.force:  # fail before the slow part
        raise VersionExists(f"{target} already exists; pass --force to replace it")
    labels = read_labels_file(request.labels_file) if request.labels_file else None
    kind, path = _detect(request)
    load = request.load
    if load.classes is None and labels:  # a described architecture's head matches the labels
        load = replace(load, classes=len(labels))
    progress(f"loading {kind} checkpoint {path}")
    loaded = load_checkpoint(kind, path, load)
    return _write(request, loaded, labels, target, version, progress)


def _detect(request: ExportRequest) -> tuple[Kind, Path]:
    detected, path = detect_kind(request.checkpoint)
    if request.kind is None or request.kind == detected:
        return detected, path
    # Only the ambiguous cases may be overridden: a .meta beside a TF2-style prefix, and an
    # .h5 file, which Keras 3 writes too (`--kind keras` reads it with Keras 3 first).
    if {request.kind, detected} == {Kind.TF1, Kind.TF2}:
        return request.kind, path
    if (request.kind, detected) == (Kind.KERAS, Kind.H5):
        return request.kind, path
    raise UsageError(f"{request.checkpoint} looks like a {detected} checkpoint, not {request.kind}")


def _write(
    request: ExportRequest,
    loaded: LoadedModel,
    labels: list[str] | None,
    target: Path,
    version: int,
    say: Progress,
) -> ServableSummary:
    preprocessing = Preprocessing(
        input_size=_input_size(request, loaded),
        normalization=request.normalization,
        mean=request.mean,
        std=request.std,
    )
    classifier = WithSoftmax(loaded.classifier) if request.softmax else loaded.classifier
    sample = probe_classifier(classifier, preprocessing)
    spec = ServableSpec(
        classifier,
        _final_labels(request, sample, labels, say),
        preprocessing,
        target,
        name=request.name,
        version=version,
        source={"kind": str(loaded.kind), "path": str(loaded.path)},
        warmup_image=_read_warmup(request.warmup_image),
        overwrite=request.force,
        tolerance=request.tolerance,
    )
    return write_servable(spec, sample=sample, progress=say)


def _final_labels(
    request: ExportRequest, sample: Sample, labels: list[str] | None, say: Progress
) -> list[str]:
    """The labels to export, checked against the model's answers on the sample images."""
    outputs = sample.expected
    if not request.softmax and not _looks_like_probabilities(outputs):
        say("warning: outputs are not probabilities (rows do not sum to 1); --softmax if logits")
    if labels is None:
        labels = [f"class_{i}" for i in range(outputs.shape[1])]
        say(f"warning: no --labels given; naming the classes class_0..class_{len(labels) - 1}")
    _check_label_count(labels, outputs.shape[1], request.labels_file)
    return labels


def _input_size(request: ExportRequest, loaded: LoadedModel) -> tuple[int, int]:
    given, declared = request.load.input_size, loaded.input_size
    if given and declared and given != declared:
        raise UsageError(
            f"--input-size {given[0]}x{given[1]} differs from the model's fixed input "
            f"{declared[0]}x{declared[1]}"
        )
    size = given or declared
    if size is None:
        raise UsageError("the model's input size is dynamic: pass --input-size HxW")
    return size


def _looks_like_probabilities(outputs: np.ndarray) -> bool:
    sums = outputs.sum(axis=1)
    return bool((outputs >= 0).all() and (abs(sums - 1) <= _PROBABILITY_SUM_SLACK).all())


def _check_label_count(labels: Sequence[str], classes: int, source: Path | None) -> None:
    if len(labels) != classes:
        raise LabelsMismatch(
            f"{source or 'labels'} has {len(labels)} labels but the model has {classes} outputs"
        )
    if not labels:
        raise InvalidLabels("no labels given")


class WithSoftmax(tf.Module):
    """A logits model followed by softmax; the model stays an attribute, so it is saved."""

    def __init__(self, inner: Classifier) -> None:
        super().__init__(name="with_softmax")
        self.inner = inner

    def __call__(self, batch: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(run_classifier(self.inner, batch), axis=-1)


def _read_warmup(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"warmup image {path} is not readable: {exc}") from exc
