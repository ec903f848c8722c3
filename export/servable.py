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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.errors import (
    BadClassifierOutput,
    ExportError,
    InvalidLabels,
    InvalidModelName,
    InvalidVersion,
    LabelsMismatch,
    VersionExists,
    WriteFailed,
    brief,
)
from export.preprocessing import NORMALIZATIONS, Preprocessing
from export.signatures import (
    PREDICT_PIXELS,
    SERVING_DEFAULT,
    Classifier,
    ServingModule,
    build_signatures,
    run_classifier,
)
from export.verify import DEFAULT_TOLERANCE, Sample, verify_saved_model
from export.warmup import WARMUP_FILE, encode_png, sample_pixels, write_warmup_file
from modelrepo import MODEL_NAME_RULE, is_model_name

__all__ = [
    "NORMALIZATIONS",
    "Preprocessing",
    "ServableSummary",
    "check_model_name",
    "check_version",
    "directory_size",
    "write_servable",
]

FORMAT_VERSION = 1
METADATA_FILE = "dynoserve.json"
LABELS_FILE = "labels.txt"

Progress = Callable[[str], None]


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
    classifier: Classifier,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    target_dir: Path,
    *,
    name: str,
    version: int,
    source: Mapping[str, str],
    warmup_image: bytes | None = None,
    overwrite: bool = False,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
) -> ServableSummary:
    """Write the version directory `target_dir` (normally <base>/<name>/<version>).

    The classifier is probed first (output size must equal len(labels)), the SavedModel is
    saved into a staging folder beside `target_dir`, reloaded and compared with the source
    (both signatures, |diff| <= tolerance), and only then renamed into place.
    """
    say = progress or (lambda _message: None)
    check_model_name(name)
    check_version(version)
    labels = check_labels(labels)
    target_dir = Path(target_dir)
    if target_dir.exists() and not overwrite:
        raise VersionExists(f"{target_dir} already exists; pass --force to replace it")
    sample = _probe(classifier, preprocessing, labels)
    warmup = warmup_image if warmup_image is not None else sample.encoded[0]
    new_model_dir = not target_dir.parent.exists()
    staging = _staging_dir(target_dir, "staging")
    try:
        say("saving the SavedModel")
        _save(classifier, labels, preprocessing, staging)
        _write_extras(staging, labels, preprocessing, name, version, source, warmup)
        diff = None
        if verify:
            say("reloading the export and comparing it with the source model")
            diff = verify_saved_model(staging, sample, labels, tolerance, warmup)
        _move_into_place(staging, target_dir, overwrite)
    except BaseException:
        if new_model_dir:  # an empty model folder would look like a model without versions
            shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(target_dir.parent)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ServableSummary(
        path=target_dir,
        name=name,
        version=version,
        input_size=preprocessing.input_size,
        normalization=preprocessing.normalization,
        labels=labels,
        signatures=(SERVING_DEFAULT, PREDICT_PIXELS),
        size_bytes=directory_size(target_dir),
        max_abs_diff=diff,
        tolerance=tolerance,
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


def _probe(classifier: Classifier, preprocessing: Preprocessing, labels: Sequence[str]) -> Sample:
    """Run the source model once: checks its output shape and records what the export must match."""
    pixels = sample_pixels(preprocessing.input_size)
    scale, offset = preprocessing.scale_offset()
    normalised = tf.constant(pixels, tf.float32) * tf.constant(scale) + tf.constant(offset)
    try:
        expected = np.asarray(run_classifier(classifier, normalised))
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        raise BadClassifierOutput(
            f"the classifier cannot run on a float32 batch {list(normalised.shape)}: {brief(exc)}"
        ) from exc
    if expected.ndim != 2 or expected.shape[0] != len(pixels):
        raise BadClassifierOutput(
            f"the classifier must return [N, classes]; it returned shape {list(expected.shape)}"
        )
    if expected.shape[1] != len(labels):
        raise LabelsMismatch(
            f"{len(labels)} labels given but the classifier has {expected.shape[1]} outputs"
        )
    encoded = [encode_png(image) for image in pixels]
    return Sample(pixels=pixels.astype(np.float32), encoded=encoded, expected=expected)


def _save(
    classifier: Classifier,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    staging: Path,
) -> None:
    module = ServingModule(classifier, labels, preprocessing)
    try:
        tf.saved_model.save(module, str(staging), signatures=build_signatures(module))
    except (tf.errors.OpError, ValueError, TypeError, OSError, AssertionError) as exc:
        raise WriteFailed(f"tf.saved_model.save failed: {brief(exc)}") from exc


def _write_extras(
    staging: Path,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    name: str,
    version: int,
    source: Mapping[str, str],
    warmup: bytes,
) -> None:
    """labels.txt, the warmup requests and dynoserve.json beside the graph."""
    assets = staging / "assets"
    assets.mkdir(exist_ok=True)
    (assets / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    extra = staging / "assets.extra"
    write_warmup_file(extra / WARMUP_FILE, name, warmup)
    metadata = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "input_size": list(preprocessing.input_size),
        "normalization": preprocessing.to_json(),
        "labels": list(labels),
        "source": dict(source),
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
