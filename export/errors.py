"""The export package's one error hierarchy: every failure the CLI reports is one of these.

Foreign exceptions are translated with `raise ... from exc`, so the CLI maps errors to exit
codes in one place: TensorFlow's by `tf_errors` at every call into it, Keras, h5py and OS errors
where they arise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ExportError(Exception):
    """Base of every export failure; `exit_code` is what the CLI exits with."""

    exit_code = 1
    code = "export_error"


class UsageError(ExportError):
    """The command line or call was malformed (bad flag value, missing option)."""

    exit_code = 2
    code = "usage_error"


class InvalidVersion(UsageError):
    """A version that is not a positive integer."""

    code = "invalid_version"


class InvalidModelName(UsageError):
    """A model name that is not a safe single directory name."""

    code = "invalid_model_name"


class InvalidPreprocessing(UsageError):
    """An unknown normalisation, a bad input size or bad mean/std values."""

    code = "invalid_preprocessing"


class InvalidLabels(UsageError):
    """Labels that are empty, duplicated, or contain line breaks."""

    code = "invalid_labels"


class CheckpointNotFound(ExportError):
    """The checkpoint path (or a file it needs) does not exist."""

    code = "checkpoint_not_found"


class UnknownCheckpointKind(ExportError):
    """The path is none of the checkpoint kinds the exporter reads."""

    code = "unknown_checkpoint_kind"


class UnreadableCheckpoint(ExportError):
    """The checkpoint exists but cannot be read as the kind it claims to be."""

    code = "unreadable_checkpoint"


class BadTensorName(ExportError):
    """A TF1 input or output tensor name that the graph does not contain."""

    code = "bad_tensor_name"


class LabelsMismatch(ExportError):
    """The number of labels differs from the classifier's output size."""

    code = "labels_mismatch"


class BadClassifierOutput(ExportError):
    """The classifier does not map [N, H, W, 3] float32 to [N, C] float32."""

    code = "bad_classifier_output"


class VersionExists(ExportError):
    """The target version directory already exists and overwriting was not asked for."""

    code = "version_exists"


class VerificationFailed(ExportError):
    """The reloaded export does not reproduce the source model's outputs."""

    code = "verification_failed"


class TrainingFailed(ExportError):
    """The demo classifier did not reach its required held-out accuracy."""

    code = "training_failed"


class WriteFailed(ExportError):
    """Saving or moving the servable on disk failed."""

    code = "write_failed"


# Characters of a foreign exception's message kept in ours: TensorFlow likes to print tensors.
_MAX_DETAIL = 300


def brief(exc: BaseException) -> str:
    """The first line of a foreign exception's message, cut to a readable length."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # TensorFlow heads a failed graph run with "Graph execution error:"; the cause comes next.
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= _MAX_DETAIL else line[:_MAX_DETAIL] + "..."


@contextmanager
def tf_errors(error: type[ExportError], doing: str) -> Iterator[None]:
    """Translate what TensorFlow raises inside the block into `error("<doing>: <detail>")`.

    Besides its own OpError, TensorFlow's loaders, tracers and savers raise plain Python errors
    for a graph, checkpoint or model they cannot use; ours (ExportError) pass through.
    """
    import tensorflow as tf  # loaded already by the caller; the CLI imports this module without

    try:
        yield
    except (tf.errors.OpError, ValueError, TypeError, KeyError, OSError, AssertionError) as exc:
        raise error(f"{doing}: {brief(exc)}") from exc
