"""Write one servable version (docs/model-format.md) atomically: stage, verify, rename.

`write_servable` is the one way any part of Dynoserve (CLI, demo, benchmark, test fixtures)
produces a model version. A failure at any step leaves nothing behind but what was there before.

Accepted classifiers: anything callable on a normalised float32 batch [N, H, W, 3] that returns
float32 probabilities [N, C] and whose variables tf.saved_model.save can track: a Keras 3 or
tf.keras 2 model (called with training=False), a tf.Module, or a tf.function / ConcreteFunction
whose variables are reachable from it (e.g. a `tf.compat.v1.wrap_function` result).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import tensorflow as tf

from export.errors import (
    ExportError,
    InvalidLabels,
    InvalidModelName,
    InvalidVersion,
    LabelsMismatch,
    VersionExists,
    WriteFailed,
    tf_errors,
)
from export.preprocessing import NORMALIZATIONS, Preprocessing
from export.progress import Progress, quiet
from export.signatures import (
    PREDICT_PIXELS,
    SERVING_DEFAULT,
    Classifier,
    ServingModule,
    build_signatures,
)
from export.verify import DEFAULT_TOLERANCE, Sample, probe_classifier, verify_saved_model
from export.warmup import WARMUP_FILE, write_warmup_file
from modelrepo import MODEL_NAME_RULE, is_model_name
from modelrepo.exportrecord import write_record

__all__ = [
    "NORMALIZATIONS",
    "Preprocessing",
    "ServableSpec",
    "ServableSummary",
    "check_model_name",
    "check_version",
    "directory_size",
    "write_servable",
]

FORMAT_VERSION = 1
METADATA_FILE = "dynoserve.json"
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class ServableSpec:
    """One version to write: the model, what it answers with, and where it goes."""

    classifier: Classifier
    """Callable on a normalised float32 batch [N, H, W, 3]; returns probabilities [N, C]."""
    labels: Sequence[str]
    """Class names in output order."""
    preprocessing: Preprocessing
    """Input size and pixel normalisation, applied in the serving graph."""
    target_dir: Path
    """The version directory, normally <base>/<name>/<version>."""
    name: str
    version: int
    source: Mapping[str, str]
    """Where the model came from, recorded in dynoserve.json."""
    warmup_image: bytes | None = None
    """The image of the warmup request; by default one of the verification images."""
    overwrite: bool = False
    """Replace an existing version directory."""
    verify: bool = True
    """Reload the export and compare it with the source before it is renamed into place."""
    tolerance: float = DEFAULT_TOLERANCE
    """Largest probability difference export vs source that verification accepts."""


@dataclass(frozen=True)
class ServableSummary:
    """What was written, for the CLI's closing summary and for callers' checks."""

    path: Path
    name: str
    version: int
    input_size: tuple[int, int]
    normalization: str
    labels: tuple[str, ...]
    signatures: tuple[str, ...]
    size_bytes: int
    max_abs_diff: float | None
    """Largest probability difference export vs source; None when verification was skipped."""
    tolerance: float = DEFAULT_TOLERANCE
    """The difference allowed."""

    def describe(self) -> str:
        """A few human-readable lines."""
        height, width = self.input_size
        shown = ", ".join(self.labels[:8]) + (", ..." if len(self.labels) > 8 else "")
        check = (
            "skipped"
            if self.max_abs_diff is None
            else f"passed, max |diff| {self.max_abs_diff:.1e} <= {self.tolerance:.0e}"
        )
        return "\n".join(
            [
                f"wrote {self.name} version {self.version} to {self.path}",
                f"  signatures: {', '.join(self.signatures)}",
                f"  input: {height}x{width} RGB, normalization {self.normalization}",
                f"  classes ({len(self.labels)}): {shown}",
                f"  size on disk: {self.size_bytes / 1e6:.2f} MB",
                f"  verification: {check}",
            ]
        )


def write_servable(
    spec: ServableSpec, *, sample: Sample | None = None, progress: Progress = quiet
) -> ServableSummary:
    """Write the version directory `spec.target_dir`.

    The classifier is probed first, unless `sample` holds its answers already (its output size
    must equal the number of labels); the SavedModel is saved into a staging folder beside the
    target, reloaded and compared with the source (both signatures, |diff| <= tolerance), and
    only then renamed into place.
    """
    labels = _check_spec(spec)
    if sample is None:
        sample = probe_classifier(spec.classifier, spec.preprocessing)
    if sample.expected.shape[1] != len(labels):
        raise LabelsMismatch(
            f"{len(labels)} labels given but the classifier has {sample.expected.shape[1]} outputs"
        )
    target_dir = Path(spec.target_dir)
    new_model_dir = not target_dir.parent.exists()
    staging = _staging_dir(target_dir, "staging")
    try:
        diff = _stage(spec, labels, sample, staging, progress)
        _move_into_place(staging, target_dir, spec.overwrite)
    except BaseException:
        if new_model_dir:  # an empty model folder would look like a model without versions
            shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(target_dir.parent)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _summary(spec, labels, target_dir, diff)


def _check_spec(spec: ServableSpec) -> tuple[str, ...]:
    """The checks that need no TensorFlow; returns the checked labels."""
    check_model_name(spec.name)
    check_version(spec.version)
    labels = check_labels(spec.labels)
    if Path(spec.target_dir).exists() and not spec.overwrite:
        raise VersionExists(f"{spec.target_dir} already exists; pass --force to replace it")
    return labels


def _stage(
    spec: ServableSpec,
    labels: tuple[str, ...],
    sample: Sample,
    staging: Path,
    progress: Progress,
) -> float | None:
    """Save and verify the version in `staging`; the largest difference (None: not verified)."""
    warmup = spec.warmup_image if spec.warmup_image is not None else sample.encoded[0]
    progress("saving the SavedModel")
    _save(spec.classifier, labels, spec.preprocessing, staging)
    _write_extras(staging, spec, labels, warmup)
    diff = None
    if spec.verify:
        progress("reloading the export and comparing it with the source model")
        diff = verify_saved_model(staging, sample, labels, spec.tolerance, warmup)
    # Sizes and hashes of what was verified: make publish refuses files changed since.
    write_record(staging, verified=spec.verify)
    return diff


def _summary(
    spec: ServableSpec, labels: tuple[str, ...], target_dir: Path, diff: float | None
) -> ServableSummary:
    return ServableSummary(
        path=target_dir,
        name=spec.name,
        version=spec.version,
        input_size=spec.preprocessing.input_size,
        normalization=spec.preprocessing.normalization,
        labels=labels,
        signatures=(SERVING_DEFAULT, PREDICT_PIXELS),
        size_bytes=directory_size(target_dir),
        max_abs_diff=diff,
        tolerance=spec.tolerance,
    )


def check_model_name(name: str) -> None:
    """A model name becomes a directory (locally and in S3): keep it to one safe path segment."""
    if not isinstance(name, str) or not is_model_name(name):
        raise InvalidModelName(f"model name {name!r} must be {MODEL_NAME_RULE}")


def check_version(version: object) -> int:
    """TF Serving only loads positive integer versions."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidVersion(f"version must be a positive integer; got {version!r}")
    return version


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Labels become lines of labels.txt and graph constants: non-empty, unique, one line each."""
    result = tuple(labels)
    if not result:
        raise InvalidLabels("no labels given")
    for label in result:
        if not isinstance(label, str) or not label.strip() or "\n" in label or "\r" in label:
            raise InvalidLabels(f"bad label {label!r}: labels are non-blank single lines")
    duplicates = sorted({label for label in result if result.count(label) > 1})
    if duplicates:
        raise InvalidLabels(f"duplicate labels: {', '.join(duplicates)}")
    return result


def directory_size(path: Path) -> int:
    """Bytes in all files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _save(
    classifier: Classifier,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    staging: Path,
) -> None:
    module = ServingModule(classifier, labels, preprocessing)
    with tf_errors(WriteFailed, "tf.saved_model.save failed"):
        tf.saved_model.save(module, str(staging), signatures=build_signatures(module))


def _write_extras(staging: Path, spec: ServableSpec, labels: Sequence[str], warmup: bytes) -> None:
    """labels.txt, the warmup requests and dynoserve.json beside the graph."""
    assets = staging / "assets"
    assets.mkdir(exist_ok=True)
    (assets / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    extra = staging / "assets.extra"
    write_warmup_file(extra / WARMUP_FILE, spec.name, warmup)
    metadata = {
        "format": FORMAT_VERSION,
        "name": spec.name,
        "version": spec.version,
        "input_size": list(spec.preprocessing.input_size),
        "normalization": spec.preprocessing.to_json(),
        "labels": list(labels),
        "source": dict(spec.source),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def _staging_dir(target_dir: Path, purpose: str) -> Path:
    """A fresh hidden folder beside the target: same filesystem, so rename is atomic.

    Its name is not an integer, so TF Serving and the sync never take it for a version.
    """
    token = f"{int(time.time())}-{secrets.token_hex(4)}"
    path = target_dir.parent / f".{purpose}-{target_dir.name}-{token}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed(f"cannot create {path.parent}: {exc}") from exc
    return path


def _remove_if_empty(directory: Path) -> None:
    # OSError: not empty (another export wrote there meanwhile) or already gone.
    with contextlib.suppress(OSError):
        directory.rmdir()


def _move_into_place(staging: Path, target_dir: Path, overwrite: bool) -> None:
    """Rename the verified staging folder to the version directory (replacing it if allowed)."""
    try:
        if not target_dir.exists():
            os.rename(staging, target_dir)
            return
        if not overwrite:  # appeared while we were exporting
            raise VersionExists(f"{target_dir} appeared during the export; not replacing it")
        trash = _staging_dir(target_dir, "replaced")
        os.rename(target_dir, trash)
        try:
            os.rename(staging, target_dir)
        except OSError:
            os.rename(trash, target_dir)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    except ExportError:
        raise
    except OSError as exc:
        raise WriteFailed(f"cannot move the export into {target_dir}: {exc}") from exc
