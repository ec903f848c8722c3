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

from serving import config as config_files
from serving.batching import BatchingOptions
from serving.dataplane import DataPlane
from serving.errors import ConfigError, InvalidArgument, ServingError
from serving.flags import ServerOptions
from serving.grpc_service import build_grpc_server
from serving.loaded import LoadedVersion
from serving.manager import ManagerOptions, ModelManager
from serving.metrics import Metrics
from serving.rest import RestApi, RestServer
from serving.servable import Servable
from serving.settings import Settings
from serving.warmup import run_warmup

log = logging.getLogger("serving.server")

GRACE_SECONDS = 30.0


def configure_tensorflow_threads(options: ServerOptions) -> None:
    """Apply the parallelism flags before TensorFlow creates its thread pools."""
    import tensorflow as tf

    intra = options.tensorflow_intra_op_parallelism or options.tensorflow_session_parallelism
    inter = options.tensorflow_inter_op_parallelism or options.tensorflow_session_parallelism
    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def read_batching(options: ServerOptions) -> BatchingOptions | None:
    """BatchingOptions when --enable_batching, from --batching_parameters_file if given."""
    if not options.enable_batching:
        return None
    proto = None
    if options.batching_parameters_file:
        proto = config_files.read_batching_parameters(options.batching_parameters_file)
    try:
        return BatchingOptions.from_proto(proto)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def initial_config(options: ServerOptions) -> Any:
    """The ModelServerConfig to start with: the file, or the single-model flags."""
    if options.model_config_file:
        return config_files.read_model_server_config(options.model_config_file)
    if not options.model_base_path:
        raise ConfigError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    return config_files.single_model_config(options.model_name, options.model_base_path)


class ModelServer:
    """Owns the manager, the data plane and both listeners."""

    def __init__(self, options: ServerOptions, settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.metrics = Metrics()
        self.batching = read_batching(options)
        monitoring = None
        if options.monitoring_config_file:
            monitoring = config_files.read_monitoring_config(options.monitoring_config_file)
        self.metrics_path = config_files.prometheus_path(monitoring)
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
        self.manager.apply_config(initial_config(self.options))
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
        self._grpc = build_grpc_server(self.plane, host, self.options.port, threads)
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", host, self.options.port)

    def _start_rest(self) -> None:
        port = self.options.rest_api_port
        if port == 0:
            return
        if port == self.options.port:
            log.error(
                "--rest_api_port cannot be same as --port. Please use a different port for "
                "HTTP/REST API. Skipped exporting HTTP/REST API."
            )
            return
        api = RestApi(self.plane, self.options.rest_api_timeout_in_ms, self.metrics_path)
        self._rest = RestServer(self.settings.bind_host, port, api, self.metrics.render)
        self._rest.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", self.settings.bind_host, port)

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
