"""gRPC transport: PredictionService and ModelService over the data plane."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.local.dataplane import DataPlane
from serving.local.errors import ServingError

log = logging.getLogger("serving.grpc")

# TF Serving sets SetMaxMessageSize(kint32max) on its builder.
_MAX_MESSAGE = 2**31 - 1


@contextlib.contextmanager
def _status(context: grpc.ServicerContext, rpc: str) -> Iterator[None]:
    try:
        yield
    except ServingError as exc:
        log.debug("%s failed: %s", rpc, exc)
        context.abort(exc.code, exc.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _status(context, "Predict"):
            return self.plane.predict(request, context.time_remaining(), "GRPC")

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _status(context, "GetModelMetadata"):
            return self.plane.model_metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _status(context, "GetModelStatus"):
            return self.plane.model_status(request)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _status(context, "HandleReloadConfigRequest"):
            return self.plane.reload_config(request)


def build_grpc_server(plane: DataPlane, host: str, port: int, threads: int) -> grpc.Server:
    """A grpc.Server with both services bound to host:port (not started)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(plane), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(plane), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC port {host}:{port}")
    return server
