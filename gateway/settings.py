"""The gateway's configuration: read once from the environment in main(), then passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from gateway.errors import ConfigError
from gateway.netguard import parse_allow_entry

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything the gateway process can be told; defaults work for `make run`."""

    port: int = 8080
    """TCP port the HTTP server listens on (Heroku's $PORT)."""
    bind_host: str = "0.0.0.0"
    """Address to bind; tests and benchmarks use 127.0.0.1."""
    model_server: str = "127.0.0.1:8500"
    """gRPC target of the model server (TF Serving or the local stand-in)."""
    models: tuple[str, ...] = ()
    """Models that must be AVAILABLE for /readyz; empty means every model in model_config_file."""
    model_config_file: Path = Path("var/models/models.config")
    """The model server's models.config, read for model names and version labels."""
    grpc_deadline_s: float = 10.0
    """Deadline of every gRPC call, well below Heroku's 30 s router timeout."""
    grpc_max_attempts: int = 3
    """Attempts per gRPC call when the server is UNAVAILABLE (retries use a token budget)."""
    signature_name: str = "serving_default"
    """Signature the gateway calls; string inputs get encoded bytes, float inputs get pixels."""
    default_top_k: int = 5
    """How many classes an answer lists when the request does not say."""
    max_batch: int = 16
    """Most images one request may carry."""
    max_image_bytes: int = 8 * 1024 * 1024
    """Largest image accepted, counted while streaming (Content-Length is not trusted)."""
    max_image_pixels: int = 40_000_000
    """Largest width x height accepted, checked from the header before decoding."""
    max_request_bytes: int = 12 * 1024 * 1024
    """Largest request body (JSON with base64 images or multipart upload)."""
    fetch_connect_timeout_s: float = 3.0
    """Timeout for connecting to an image host."""
    fetch_read_timeout_s: float = 5.0
    """Timeout for each read from an image host."""
    fetch_total_timeout_s: float = 8.0
    """Time budget for one image fetch, redirects included."""
    fetch_max_redirects: int = 3
    """Redirects followed per fetch; each hop is checked again."""
    fetch_allow_hosts: tuple[str, ...] = ()
    """If set, only these hosts (".example.com" matches subdomains) or origins
    ("https://images.example.com:8443": scheme, host and port must all match) may be fetched."""
    fetch_allow_private: bool = False
    """Allow loopback and private addresses (tests, benchmarks, private networks only)."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """If set, API requests need one of these keys (Bearer token or X-API-Key)."""
    max_in_flight: int = 32
    """Images in prediction at once (a batch of n counts n); more wait in the admission queue."""
    max_queue: int = 256
    """Images that may wait in the admission queue; past it requests are refused with 503."""
    admission_budget_s: float = 12.0
    """Refuse a request (503) only when its estimated time to answer is over this (< 30 s)."""
    threads: int = 0
    """Waitress worker threads; 0 means max_in_flight + max_queue + 8 (every waiter a thread)."""
    backlog: int = 2048
    """Listen backlog; a small one stalls connection bursts."""
    client_timeout_s: int = 10
    """Seconds a client connection may stay silent (an incomplete request body included) before
    it is closed; waitress buffers bodies itself, so such a client never holds a worker."""
    retry_after_s: int = 1
    """Retry-After seconds sent with 503 answers."""
    shutdown_timeout_s: float = 12.0
    """On SIGTERM, how long in-flight requests may finish (supervisord stopwaitsecs is 15 s)."""
    log_level: str = "INFO"
    """Python log level of the JSON logs on stdout."""
    sync_status_file: Path = Path("var/models/sync-status.json")
    """Status file written by sync; exported in /metrics when present."""

    @property
    def worker_threads(self) -> int:
        """Threads waitress runs: the explicit setting, or one per request that may be admitted
        or waiting plus headroom, so a request past the queue is refused at once instead of
        waiting in waitress's own queue for a thread, and probes always find one."""
        return self.threads or self.max_in_flight + self.max_queue + 8

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from DYNOSERVE_* variables (and PORT); raise ConfigError on bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = "PORT" if f.name == "port" else _env_name(f.name)
            raw = env.get(name)
            if raw is not None:
                values[f.name] = _parse(name, raw, f.default)
        values.update(_base_path_defaults(env, values))
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject combinations that cannot work, naming the variable."""
        positive = {
            "PORT": self.port,
            "DYNOSERVE_GRPC_DEADLINE_S": self.grpc_deadline_s,
            "DYNOSERVE_GRPC_MAX_ATTEMPTS": self.grpc_max_attempts,
            "DYNOSERVE_MAX_BATCH": self.max_batch,
            "DYNOSERVE_MAX_IMAGE_BYTES": self.max_image_bytes,
            "DYNOSERVE_MAX_IMAGE_PIXELS": self.max_image_pixels,
            "DYNOSERVE_MAX_IN_FLIGHT": self.max_in_flight,
            "DYNOSERVE_DEFAULT_TOP_K": self.default_top_k,
            "DYNOSERVE_FETCH_TOTAL_TIMEOUT_S": self.fetch_total_timeout_s,
            "DYNOSERVE_CLIENT_TIMEOUT_S": self.client_timeout_s,
            "DYNOSERVE_ADMISSION_BUDGET_S": self.admission_budget_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.max_queue < 0:
            raise ConfigError(f"DYNOSERVE_MAX_QUEUE must be 0 or more, got {self.max_queue}")
        if self.admission_budget_s >= 30:
            raise ConfigError("DYNOSERVE_ADMISSION_BUDGET_S must stay below Heroku's 30 s limit")
        if self.grpc_deadline_s >= 30:
            raise ConfigError("DYNOSERVE_GRPC_DEADLINE_S must stay below Heroku's 30 s limit")
        if self.grpc_max_attempts > 5:
            raise ConfigError("DYNOSERVE_GRPC_MAX_ATTEMPTS is capped at 5 by gRPC")
        for entry in self.fetch_allow_hosts:
            try:
                parse_allow_entry(entry)
            except ValueError as exc:
                raise ConfigError(f"DYNOSERVE_FETCH_ALLOW_HOSTS: {exc}") from exc


def _base_path_defaults(env: Mapping[str, str], values: dict[str, object]) -> dict[str, Path]:
    """Files sync writes beside the models: under DYNOSERVE_MODEL_BASE_PATH, as sync puts them."""
    base = env.get("DYNOSERVE_MODEL_BASE_PATH")
    if not base:
        return {}
    defaults = {"model_config_file": "models.config", "sync_status_file": "sync-status.json"}
    return {name: Path(base) / file for name, file in defaults.items() if name not in values}


def _env_name(field_name: str) -> str:
    return "DYNOSERVE_" + field_name.upper()


def _parse(name: str, raw: str, default: object) -> object:
    """Convert one variable to the type of its field's default."""
    text = raw.strip()
    try:
        if isinstance(default, bool):
            return _parse_bool(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, Path):
            return Path(text)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in text.split(",") if item.strip())
        return text
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from exc


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
