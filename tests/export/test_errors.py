"""export/errors.tf_errors: TensorFlow's errors become the export's, with the cause kept."""

from __future__ import annotations

import pytest
import tensorflow as tf

from export.errors import InvalidLabels, UnreadableCheckpoint, WriteFailed, tf_errors


@pytest.mark.parametrize(
    "raised",
    [
        tf.errors.NotFoundError(None, None, "no such file: ckpt-3.index\nmore detail"),
        ValueError("shapes (1, 3) and (4,) are incompatible"),
        AssertionError("unresolved object in checkpoint"),
    ],
)
def test_translated_with_the_cause(raised: Exception) -> None:
    with pytest.raises(UnreadableCheckpoint) as caught, tf_errors(UnreadableCheckpoint, "ckpt-3"):
        raise raised
    first_line = str(raised).splitlines()[0]
    assert str(caught.value) == f"ckpt-3: {first_line}"
    assert caught.value.__cause__ is raised


def test_ours_pass_through() -> None:
    ours = InvalidLabels("duplicate labels: a")
    with pytest.raises(InvalidLabels) as caught, tf_errors(WriteFailed, "saving"):
        raise ours
    assert caught.value is ours
