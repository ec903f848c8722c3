"""Text-format config files read with the official protos, validated as TF Serving's ServerCore.

ModelServerConfig comes from tensorflow-serving-api; BatchingParameters and MonitoringConfig from
the official .proto sources compiled into serving/local/protos/descriptors.binpb (see protogen.py).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format
from grpc import StatusCode
from tensorflow_serving.config import model_server_config_pb2

from serving.local.errors import ConfigError, InvalidArgument

log = logging.getLogger("serving.config")

DESCRIPTOR_SET = Path(__file__).resolve().parent / "protos" / "descriptors.binpb"
TENSORFLOW_PLATFORM = "tensorflow"
PROMETHEUS_DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


@functools.cache
def _message_class(full_name: str) -> Any:
    """A message class from the committed descriptor set, registered in the default pool once."""
    # The TF protos our files import must be in the default pool before ours are added.
    from google.protobuf import wrappers_pb2  # noqa: F401
    from tensorflow.core.protobuf import config_pb2, named_tensor_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    for file_proto in files.file:
        try:
            pool.FindFileByName(file_proto.name)
        except KeyError:
            pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def batching_parameters_class() -> Any:
    return _message_class("tensorflow.serving.BatchingParameters")


def monitoring_config_class() -> Any:
    return _message_class("tensorflow.serving.MonitoringConfig")


def parse_text_file(path: str, proto: message.Message) -> message.Message:
    """Parse an ascii proto file; refuse it with TF Serving's message when it does not parse."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}; {exc.strerror}", code=StatusCode.NOT_FOUND) from exc
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        # protobuf's own ERROR line (TextFormat's error collector) says what is wrong and
        # where; TF Serving's status only names the file.
        log.error("%s", parse_error_line(proto, exc))
        raise ConfigError(f"Invalid protobuf file: '{path}'") from exc
    return proto


def parse_error_line(proto: message.Message, exc: text_format.ParseError) -> str:
    """`Error parsing text-format <type>: <line>:<col>: <reason>`, as libprotobuf logs it."""
    reason = str(exc)
    line, column = exc.GetLine(), exc.GetColumn()
    if line is not None:
        reason = reason.split(" : ", 1)[-1]
    where = f"{line}:{column}: " if line is not None else ""
    return f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {where}{reason}"


def read_model_server_config(path: str) -> Any:
    """A ModelServerConfig from --model_config_file, validated like ServerCore::ReloadConfig."""
    config = parse_text_file(path, ModelServerConfig())
    validate_model_server_config(config)
    return config


def single_model_config(name: str, base_path: str) -> Any:
    """The config TF Serving builds for --model_name/--model_base_path (BuildSingleModelConfig)."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def validate_model_server_config(config: Any) -> None:
    """Unique names, absolute base paths, the tensorflow platform: ServerCore's checks."""
    which = config.WhichOneof("config")
    if which == "custom_model_config":
        raise InvalidArgument("ModelServer does not yet support custom model config.")
    names: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise InvalidArgument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        names.add(model.name)
    for model in config.model_config_list.config:
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise InvalidArgument(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
        _validate_platform(model)


def _validate_platform(model: Any) -> None:
    if model.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if model.model_platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) "
                "and ModelServerConfig::model_platform."
            )
        if model.model_type != model_server_config_pb2.TENSORFLOW:
            raise InvalidArgument(
                f"ModelServerConfig::model_type choice {model.model_type} not supported."
            )
        return
    if not model.model_platform:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) "
            "nor ModelServerConfig::model_platform."
        )
    if model.model_platform != TENSORFLOW_PLATFORM:
        raise InvalidArgument(
            f"Model {model.name} requested unsupported platform {model.model_platform}"
        )


def read_batching_parameters(path: str) -> Any:
    return parse_text_file(path, batching_parameters_class()())


def read_monitoring_config(path: str) -> Any:
    return parse_text_file(path, monitoring_config_class()())


def prometheus_path(monitoring: Any | None) -> str | None:
    """The metrics path when Prometheus export is enabled, else None."""
    if monitoring is None or not monitoring.prometheus_config.enable:
        return None
    return str(monitoring.prometheus_config.path or PROMETHEUS_DEFAULT_PATH)
