"""What a signature asks for (gateway/signatures.py): whether its graph reports each image's
failed decode (a DT_BOOL `decoded` output, one value per image), which lets the gateway vet
encoded images by their header alone."""

from __future__ import annotations

import pytest

from gateway.client import DECODED_OUTPUT, Signature, TensorSpec
from gateway.signatures import describe_signature, input_plan

IMAGES = {"images": TensorSpec("DT_STRING", (-1,))}
PIXELS = {"pixels": TensorSpec("DT_FLOAT", (-1, 32, 32, 3))}
SCORES = {"probabilities": TensorSpec("DT_FLOAT", (-1, 3))}


def signature(inputs: dict[str, TensorSpec], decoded: TensorSpec | None) -> Signature:
    outputs = dict(SCORES)
    if decoded is not None:
        outputs[DECODED_OUTPUT] = decoded
    return Signature("serving_default", inputs, outputs)


@pytest.mark.parametrize(
    ("decoded", "tolerant"),
    [
        (TensorSpec("DT_BOOL", (-1,)), True),
        (TensorSpec("DT_BOOL", (4,)), True),  # a model with a fixed batch of 4
        (None, False),
        (TensorSpec("DT_FLOAT", (-1,)), False),
        (TensorSpec("DT_INT64", (-1,)), False),
        (TensorSpec("DT_BOOL", (-1, 1)), False),
        (TensorSpec("DT_BOOL", ()), False),
        (TensorSpec("DT_BOOL", None), False),  # unknown rank: one value per image unproven
    ],
)
def test_an_encoded_plan_is_tolerant_only_with_a_bool_per_image(
    decoded: TensorSpec | None, tolerant: bool
) -> None:
    plan = input_plan(signature(IMAGES, decoded))
    assert (plan.kind, plan.key, plan.tolerant) == ("encoded", "images", tolerant)


def test_a_pixel_plan_is_never_tolerant() -> None:
    """The gateway decodes pixels itself: a `decoded` output has nothing to say about them."""
    plan = input_plan(signature(PIXELS, TensorSpec("DT_BOOL", (-1,))))
    assert (plan.kind, plan.tolerant) == ("pixels", False)


def test_plans_that_differ_in_tolerance_are_not_equal() -> None:
    """A rollout retry resends vetted images only under an equal plan (predictor.py): images
    vetted by their header alone must not go to a version that cannot report failures."""
    assert input_plan(signature(IMAGES, TensorSpec("DT_BOOL", (-1,)))) != input_plan(
        signature(IMAGES, None)
    )


def test_the_json_view_says_who_proves_an_image_decodes() -> None:
    tolerant, _ = describe_signature(signature(IMAGES, TensorSpec("DT_BOOL", (-1,))))
    plain, classes = describe_signature(signature(IMAGES, None))
    pixels, _ = describe_signature(signature(PIXELS, TensorSpec("DT_BOOL", (-1,))))
    assert (tolerant["decode_check"], plain["decode_check"]) == ("model", "gateway")
    assert pixels["decode_check"] == "gateway"
    outputs = tolerant["outputs"]
    assert isinstance(outputs, dict)
    assert outputs[DECODED_OUTPUT] == {"dtype": "DT_BOOL", "shape": [-1]}
    assert classes == 3
