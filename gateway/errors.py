"""The gateway's one error hierarchy: each error carries its HTTP status and a stable code.

Foreign exceptions (gRPC, sockets, Pillow) are translated into these where they are raised;
app.py renders every GatewayError as `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from envsettings import SettingsError


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses set status and code."""

    status = 500
    code = "internal"
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def retry_after_header(self, default_s: int) -> str | None:
        """Retry-After for this answer: none, or the configured wait (DYNOSERVE_RETRY_AFTER_S);
        an error that knows its own wait overrides this."""
        return None if self.retry_after is None else str(default_s)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class TooManyRequests(GatewayError):
    """This client holds more than its fair share of a pool others are waiting for; everyone
    else is served. Answered with Retry-After."""

    status = 429
    code = "client_over_share"
    retry_after = 1


class ConfigError(GatewayError, SettingsError):
    """Settings that cannot work together; raised at start, never while serving."""

    code = "config_error"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class InvalidParameter(BadRequest):
    code = "invalid_parameter"


class RepeatedParameter(InvalidParameter):
    """A query parameter or form field given more than once: which one was meant is unknown,
    so none is picked silently."""

    code = "repeated_parameter"


class InvalidImageUrl(BadRequest):
    code = "invalid_image_url"


class ForbiddenImageUrl(BadRequest):
    """The URL points somewhere the gateway refuses to go (private address, scheme, host)."""

    code = "image_url_forbidden"


class TooManyRedirects(BadRequest):
    """The URL leads through more redirects than DYNOSERVE_FETCH_MAX_REDIRECTS: the URL's fault."""

    code = "too_many_redirects"


class InvalidArgument(BadRequest):
    """The model server rejected the request's content."""

    code = "invalid_argument"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class LabelNotFound(NotFound):
    code = "label_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "image_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_image_format"


class UndecodableImage(GatewayError):
    status = 422
    code = "undecodable_image"


class BadGateway(GatewayError):
    status = 502
    code = "bad_gateway"


class ImageHostError(BadGateway):
    code = "image_host_error"


class ModelServerError(BadGateway):
    code = "model_server_error"


class ServiceUnavailable(GatewayError):
    """Try again soon: answered with Retry-After."""

    status = 503
    code = "unavailable"
    retry_after = 1


class ModelNotReady(ServiceUnavailable):
    code = "model_not_ready"


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class FetchCapacity(Overloaded):
    """Every image-fetch slot (DYNOSERVE_MAX_FETCHES) is taken."""

    code = "fetch_capacity"


# The stages of a prediction that spend from the request's deadline, in order.
DEADLINE_STAGES = ("metadata", "fetch", "queue", "inference")


class DeadlineExceeded(GatewayError):
    """Out of time: the gRPC deadline, or the request's own (DYNOSERVE_REQUEST_TIMEOUT_S) while
    in `stage`, which the answer names."""

    status = 504
    code = "deadline_exceeded"

    def __init__(self, message: str, *, code: str | None = None, stage: str | None = None) -> None:
        super().__init__(message, code=code)
        self.stage = stage

    def to_json(self) -> dict[str, dict[str, str]]:
        body = super().to_json()
        if self.stage is not None:
            body["error"]["stage"] = self.stage
        return body


# Hand-written on purpose: each gRPC status says who is at fault, which decides the HTTP status.
GRPC_TO_ERROR: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotReady,
    grpc.StatusCode.ABORTED: ServiceUnavailable,
    grpc.StatusCode.CANCELLED: ServiceUnavailable,
    grpc.StatusCode.UNIMPLEMENTED: ModelServerError,
    grpc.StatusCode.INTERNAL: ModelServerError,
    grpc.StatusCode.UNKNOWN: ModelServerError,
    grpc.StatusCode.DATA_LOSS: ModelServerError,
    grpc.StatusCode.ALREADY_EXISTS: ModelServerError,
    # The gateway's own credentials or config are wrong: not the caller's fault.
    grpc.StatusCode.PERMISSION_DENIED: ModelServerError,
    grpc.StatusCode.UNAUTHENTICATED: ModelServerError,
}


def error_for_grpc(code: grpc.StatusCode, details: str) -> GatewayError:
    """The GatewayError for a gRPC status, with the server's message."""
    cls = GRPC_TO_ERROR.get(code, ModelServerError)
    return cls(f"model server: {details or code.name}")


@contextmanager
def grpc_errors() -> Iterator[None]:
    """Translate grpc.RpcError raised inside the block into a GatewayError."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        raise error_for_grpc(code, details) from exc
