"""The model server's one error type: a gRPC status code plus TF Serving's message text.

Every failure a client can see is a ServingError; the gRPC layer aborts with its code, the REST
layer renders `{"error": message}` with the HTTP status TF Serving's http_server.cc uses.
"""

from __future__ import annotations

from http import HTTPStatus

from grpc import StatusCode

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc), written out by hand.
HTTP_STATUS_FOR_CODE: dict[StatusCode, int] = {
    StatusCode.OK: HTTPStatus.OK,
    StatusCode.CANCELLED: 499,  # CLIENT_CLOSED_REQUEST
    StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    StatusCode.ABORTED: HTTPStatus.CONFLICT,
    StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}


# Names as tensorflow::error::Code prints them in status protos ("OK", "NOT_FOUND", ...).
def code_name(code: StatusCode) -> str:
    """The canonical upper-case name of a status code."""
    return str(code.name)


class ServingError(Exception):
    """A failure reported to the client with a canonical status code and message."""

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, code: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def http_status(self) -> int:
        return int(HTTP_STATUS_FOR_CODE.get(self.code, HTTPStatus.INTERNAL_SERVER_ERROR))

    def __str__(self) -> str:
        return f"{code_name(self.code)}: {self.message}"


class NotFound(ServingError):
    code = StatusCode.NOT_FOUND


class InvalidArgument(ServingError):
    code = StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ServingError):
    code = StatusCode.FAILED_PRECONDITION


class Unavailable(ServingError):
    code = StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = StatusCode.DEADLINE_EXCEEDED


class Internal(ServingError):
    code = StatusCode.INTERNAL


class Unknown(ServingError):
    code = StatusCode.UNKNOWN


class ConfigError(ServingError):
    """A flag or config file TF Serving would refuse at startup."""

    code = StatusCode.INVALID_ARGUMENT
