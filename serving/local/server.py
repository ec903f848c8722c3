"""The local model server assembled from its parts, in TF Serving's start-up order.

Config files are read and checked first, then every configured model must become AVAILABLE
(ServerCore::Create), then the gRPC port opens, then the REST port. stop() is graceful: the
ports stop taking calls, in-flight calls and queued batches finish, then versions unload.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc

from serving.flags import ServerOptions
from serving.local import config as config_files
from serving.local.batching import BatchingOptions
from serving.local.dataplane import DataPlane
from serving.local.errors import ConfigError, InvalidArgument, ServingError
from serving.local.grpc_service import build_grpc_server
from serving.local.loaded import LoadedVersion
from serving.local.manager import ManagerOptions, ModelManager
from serving.local.metrics import Metrics
from serving.local.rest import RestApi, RestServer
from serving.local.servable import Servable
from serving.local.warmup import run_warmup
from serving.settings import Settings

log = logging.getLogger("serving.server")

GRACE_SECONDS = 30.0
# The pool name server.cc gives batching when no --batching_parameters_file is given.
DEFAULT_BATCH_THREAD_POOL = "model_server_batch_threads"


def check_options(options: ServerOptions) -> None:
    """Server::BuildAndStart's first refusals (server.cc), before any file is read."""
    if options.port == 0 and "grpc_socket_path" not in options.ignored:
        raise ConfigError(
            "At least one of server_options.grpc_port or server_options.grpc_socket_path "
            "must be set."
        )
    if not options.model_base_path and not options.model_config_file:
        raise ConfigError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )


def configure_tensorflow_threads(options: ServerOptions) -> None:
    """Apply the parallelism flags as server.cc does, before TF creates its thread pools."""
    import tensorflow as tf

    intra = options.tensorflow_intra_op_parallelism
    inter = options.tensorflow_inter_op_parallelism
    session = options.tensorflow_session_parallelism
    if intra > 0 and inter > 0 and session > 0:
        raise ConfigError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. "
            "You cannot configure all."
        )
    if intra <= 0 and inter <= 0:
        intra = inter = session
    # 0 leaves the pool to TensorFlow's default, as a SessionConfig field of 0 does.
    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def read_batching(options: ServerOptions) -> BatchingOptions | None:
    """BatchingOptions when --enable_batching, from --batching_parameters_file if given."""
    if not options.enable_batching:
        if options.batching_parameters_file:
            raise ConfigError(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        return None
    if not options.batching_parameters_file:
        return BatchingOptions(thread_pool_name=DEFAULT_BATCH_THREAD_POOL)
    proto = config_files.read_batching_parameters(options.batching_parameters_file)
    try:
        return BatchingOptions.from_proto(proto)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def initial_config(options: ServerOptions) -> Any:
    """The ModelServerConfig to start with: the file, or the single-model flags."""
    if options.model_config_file:
        return config_files.read_model_server_config(options.model_config_file)
    return config_files.single_model_config(options.model_name, options.model_base_path)


class ModelServer:
    """Owns the manager, the data plane and both listeners."""

    def __init__(self, options: ServerOptions, settings: Settings) -> None:
        # server.cc's order: option checks, the model config, batching, parallelism; the
        # monitoring file is only read when the REST port opens.
        check_options(options)
        self.options = options
        self.settings = settings
        self.metrics = Metrics()
        self.config = initial_config(options)
        self.batching = read_batching(options)
        configure_tensorflow_threads(options)
        self.manager = ModelManager(
            self._load,
            ManagerOptions(
                allow_labels_for_unavailable=options.allow_version_labels_for_unavailable_models,
                max_load_retries=options.max_num_load_retries,
                load_retry_interval=max(options.load_retry_interval_micros, 0) / 1e6,
            ),
        )
        self.plane = DataPlane(self.manager, self.metrics, self.manager.apply_config)
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self._stop = threading.Event()
        self._config_poller: threading.Thread | None = None

    def _load(self, name: str, version: int, path: Path) -> LoadedVersion:
        tags = frozenset(t for t in self.options.saved_model_tags.split(",") if t)
        loaded = LoadedVersion(Servable(name, version, path, tags), self.batching, self.metrics)
        try:
            if self.options.enable_model_warmup:
                run_warmup(loaded, self.options.num_request_iterations_for_warmup)
        except Exception:
            self.metrics.load_attempt_count.labels(name, str(version), "FAIL").inc()
            loaded.close()
            raise
        self.metrics.load_attempt_count.labels(name, str(version), "OK").inc()
        return loaded

    def start(self) -> None:
        """Load the initial models, then open the ports; ServingError when that fails."""
        self.manager.apply_config(self.config)
        self.manager.start_polling(self.options.file_system_poll_wait_seconds)
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, daemon=True)
            self._config_poller.start()
        if self.options.port != 0:
            self._start_grpc()
        self._start_rest()

    def _start_grpc(self) -> None:
        threads = self.options.grpc_max_threads or max(128, 8 * (os.cpu_count() or 1))
        host = self.settings.bind_host
        try:
            self._grpc = build_grpc_server(self.plane, host, self.options.port, threads)
        except OSError as exc:
            log.error("%s", exc)
            raise InvalidArgument("Failed to BuildAndStart gRPC server") from exc
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", host, self.options.port)

    def _start_rest(self) -> None:
        port = self.options.rest_api_port
        if port == 0:
            return
        if port == self.options.port:
            log.error(
                "server_options.http_port cannot be same as grpc_port. Please use a different "
                "port for HTTP/REST API. Skipped exporting HTTP/REST API."
            )
            return
        monitoring = None
        if self.options.monitoring_config_file:
            monitoring = config_files.read_monitoring_config(self.options.monitoring_config_file)
        metrics_path = config_files.prometheus_path(monitoring)
        api = RestApi(self.plane, self.options.rest_api_timeout_in_ms, metrics_path)
        host = self.settings.bind_host
        try:
            self._rest = RestServer(host, port, api, self.metrics.render)
        except OSError as exc:
            # As server.cc: a REST port that cannot open is logged; gRPC keeps serving.
            log.error("Failed to start HTTP Server at %s:%d (%s)", host, port, exc.strerror)
            return
        self._rest.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, port)

    def _poll_config(self) -> None:
        path = self.options.model_config_file
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                config = config_files.read_model_server_config(path)
            except ServingError as exc:
                log.error("Failed to read ModelServerConfig file: %s", exc.message)
                continue
            try:
                self.manager.apply_config(config)
            except ServingError as exc:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc)

    def abort_startup(self) -> None:
        """Make a start() that is still loading models give up (SIGTERM during boot)."""
        self._stop.set()
        self.manager.request_stop()

    def stop(self) -> None:
        """Graceful shutdown: stop accepting, let in-flight calls finish, unload."""
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(GRACE_SECONDS).wait()
        if self._rest is not None:
            self._rest.stop()
        if self._config_poller is not None:
            self._config_poller.join()
        self.manager.stop()
        log.info("Server stopped")
