"""The RPCs as plain functions on protos; gRPC and REST are thin transports over this class."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from grpc import StatusCode
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
)

from serving.local.errors import InvalidArgument, ServingError, code_name
from serving.local.manager import ModelManager, VersionRecord
from serving.local.metrics import Metrics
from serving.local.predict import make_response, prepare

log = logging.getLogger("serving.dataplane")

SIGNATURE_DEF_FIELD = "signature_def"
ReloadFunction = Callable[[Any], None]


class DataPlane:
    """Predict, GetModelMetadata, GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ModelManager, metrics: Metrics, reload: ReloadFunction) -> None:
        self.manager = manager
        self.metrics = metrics
        self._reload = reload

    def predict(self, request: Any, timeout: float | None, entrypoint: str) -> Any:
        """Run a PredictRequest on the version its model_spec names."""
        started = time.perf_counter()
        name = request.model_spec.name
        try:
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            with self.manager.serving(request.model_spec) as loaded:
                call = prepare(loaded.servable, request)
                outputs = loaded.run(call, timeout)
                response = make_response(name, loaded.version, call.signature_name, outputs)
        except ServingError as exc:
            self.metrics.request_count.labels(name, code_name(exc.code)).inc()
            raise
        self.metrics.request_count.labels(name, "OK").inc()
        elapsed_us = (time.perf_counter() - started) * 1e6
        self.metrics.request_latency.labels(name, "predict", entrypoint).observe(elapsed_us)
        return response

    def model_metadata(self, request: Any) -> Any:
        """GetModelMetadataImpl: only the signature_def field exists."""
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        if not request.metadata_field:
            raise InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field_name in request.metadata_field:
            if field_name != SIGNATURE_DEF_FIELD:
                raise InvalidArgument(f"Metadata field {field_name} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        with self.manager.serving(request.model_spec) as loaded:
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = loaded.version
            for key, signature in loaded.servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def model_status(self, request: Any) -> Any:
        """GetModelStatusImpl: the given version, else all versions, newest first."""
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, record in self.manager.status(spec.name, version):
            _add_status(response, number, record)
        return response

    def reload_config(self, request: Any) -> Any:
        """ModelServiceImpl::HandleReloadConfigRequest."""
        response = model_management_pb2.ReloadConfigResponse()
        config = request.config
        try:
            if config.WhichOneof("config") != "model_config_list":
                raise InvalidArgument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            for index, model in enumerate(config.model_config_list.config):
                log.info(
                    "Config entry index : %d path : %s name : %s platform : %s",
                    index,
                    model.base_path,
                    model.name,
                    model.model_platform,
                )
            self._reload(config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            response.status.error_code = exc.code.value[0]
            response.status.error_message = exc.message
            raise
        return response


def _add_status(response: Any, version: int, record: VersionRecord) -> None:
    entry = response.model_version_status.add()
    entry.version = version
    entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(record.state.value)
    if record.error is not None:
        entry.status.error_code = record.error.code.value[0]
        entry.status.error_message = record.error.message
    else:
        entry.status.error_code = StatusCode.OK.value[0]
