"""A scripted fake of TF Serving's gRPC services on a real loopback gRPC server, named so: it
produces failures, delays and a held model on demand, which the real model server cannot."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from gateway._proto.dynoserve.tf_serving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    services_pb2_grpc,
)
from tests.support import free_port


class FakeGrpcModelServer(
    services_pb2_grpc.PredictionServiceServicer, services_pb2_grpc.ModelServiceServicer
):
    """A scripted fake of TF Serving's gRPC PredictionService and ModelService: answers Predict
    with fixed scores after failing `failures` times with `code`."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.delay = 0.0
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.unloaded_versions: set[int] = set()
        self.latest = 3
        self.input_dtype = 7  # DT_STRING
        self.input_shape: list[int] = [-1]
        self.predicted: list[tuple[str, list[int]]] = []  # (model, input dims) per Predict
        # A slow or held model: Predict waits for the gate, then sleeps predict_delay.
        self.predict_gate: threading.Event | None = None
        self.predict_delay = 0.0
        self.predicting = 0  # Predict calls waiting on the gate or the delay now

    def _maybe_fail(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.failures
        self.metadata.append(dict(context.invocation_metadata()))
        if self.delay:
            time.sleep(self.delay)
        if failing:
            context.abort(self.code, "scripted failure")

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.predicting += 1
        try:
            if self.predict_gate is not None:
                self.predict_gate.wait(30)
            if self.predict_delay:
                time.sleep(self.predict_delay)
        finally:
            with self.lock:
                self.predicting -= 1
        self._maybe_fail(context)
        dims = [d.size for d in next(iter(request.inputs.values())).tensor_shape.dim]
        self.predicted.append((request.model_spec.name, dims))
        version = request.model_spec.version.value or self.latest
        if version in self.unloaded_versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: Specific(m, {version})")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        rows = max(1, next(iter(request.inputs.values())).tensor_shape.dim[0].size)
        probs = response.outputs["probabilities"]
        probs.dtype = 1
        probs.tensor_shape.dim.add(size=rows)
        probs.tensor_shape.dim.add(size=3)
        probs.tensor_content = struct.pack("<3f", 0.2, 0.5, 0.3) * rows
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._maybe_fail(context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = request.model_spec.version.value or self.latest
        sigs = get_model_metadata_pb2.SignatureDefMap()
        images = sigs.signature_def["serving_default"].inputs["images"]
        images.dtype = self.input_dtype
        for size in self.input_shape:
            images.tensor_shape.dim.add(size=size)
        response.metadata["signature_def"].Pack(sigs)
        return response

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._maybe_fail(context)
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=3, state=30)
        return response


Servicer = TypeVar("Servicer")


@contextmanager
def serve_fake(
    servicer: Servicer, workers: int = 16, max_message_bytes: int | None = None
) -> Iterator[tuple[Servicer, str]]:
    """A fake of TF Serving's Prediction and Model services on a gRPC server on 127.0.0.1:
    (servicer, target) until the block ends."""
    options = (
        []
        if max_message_bytes is None
        else [("grpc.max_receive_message_length", max_message_bytes)]
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    services_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    services_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
