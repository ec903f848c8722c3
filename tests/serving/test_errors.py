"""The one error type and TF Serving's status-to-HTTP table."""

from __future__ import annotations

from grpc import StatusCode

from serving.local.errors import HTTP_STATUS_FOR_CODE, NotFound, ServingError, Unavailable


def test_http_mapping_is_tf_servings() -> None:
    expected = {
        StatusCode.INVALID_ARGUMENT: 400,
        StatusCode.FAILED_PRECONDITION: 400,
        StatusCode.NOT_FOUND: 404,
        StatusCode.DEADLINE_EXCEEDED: 504,
        StatusCode.UNAVAILABLE: 503,
        StatusCode.UNIMPLEMENTED: 501,
        StatusCode.RESOURCE_EXHAUSTED: 429,
        StatusCode.CANCELLED: 499,
        StatusCode.INTERNAL: 500,
    }
    for code, status in expected.items():
        assert HTTP_STATUS_FOR_CODE[code] == status
    assert set(HTTP_STATUS_FOR_CODE) == set(StatusCode)


def test_errors_carry_code_message_and_http_status() -> None:
    error = NotFound("Servable not found for request: Latest(x)")
    assert error.code is StatusCode.NOT_FOUND
    assert error.http_status == 404
    assert str(error) == "NOT_FOUND: Servable not found for request: Latest(x)"
    assert Unavailable("full").http_status == 503
    assert ServingError("boom", StatusCode.DATA_LOSS).http_status == 500
