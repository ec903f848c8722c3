"""The gateway's configuration: read once from the environment in main(), then passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envsettings import EnvSettings, env
from gateway.errors import ConfigError
from gateway.membudget import largest_body_cost
from gateway.netguard import parse_allow_entry
from modelrepo import DEFAULT_BASE_PATH, config_file, status_file
from modelrepo.rollouts import rollouts_file


@dataclass(frozen=True)
class Settings(EnvSettings):
    """Everything the gateway process can be told; defaults work for `make run`."""

    port: int = env("PORT", 8080)
    """TCP port the HTTP server listens on (Heroku's $PORT)."""
    bind_host: str = env("DYNOSERVE_BIND_HOST", "0.0.0.0")
    """Address to bind; tests and benchmarks use 127.0.0.1."""
    model_server: str = env("DYNOSERVE_MODEL_SERVER", "127.0.0.1:8500")
    """gRPC target of the model server (TF Serving or the local stand-in)."""
    models: tuple[str, ...] = env("DYNOSERVE_MODELS", ())
    """Models that must be AVAILABLE for /readyz; empty means every model in model_config_file."""
    model_base_path: Path = env("DYNOSERVE_MODEL_BASE_PATH", DEFAULT_BASE_PATH)
    """The model server's base path; sync writes models.config and its status file there."""
    model_config_file: Path = env(
        "DYNOSERVE_MODEL_CONFIG_FILE",
        config_file(DEFAULT_BASE_PATH),
        derive=lambda read: config_file(read["model_base_path"]),
    )
    """The model server's models.config, read for model names and version labels."""
    request_timeout_s: float = env("DYNOSERVE_REQUEST_TIMEOUT_S", 25.0)
    """One deadline per request, counted from its first byte: upload, queue wait, image fetches
    and gRPC calls all spend from it, so an answer (504 naming the stage that ran out at worst)
    comes before Heroku's router gives up at 30 s."""
    grpc_deadline_s: float = env("DYNOSERVE_GRPC_DEADLINE_S", 10.0)
    """Cap of every gRPC call; a prediction's calls also end with its request deadline."""
    grpc_max_attempts: int = env("DYNOSERVE_GRPC_MAX_ATTEMPTS", 3)
    """Attempts per gRPC call when the server is UNAVAILABLE (retries use a token budget)."""
    signature_name: str = env("DYNOSERVE_SIGNATURE_NAME", "serving_default")
    """Signature the gateway calls; string inputs get encoded bytes, float inputs get pixels."""
    default_top_k: int = env("DYNOSERVE_DEFAULT_TOP_K", 5)
    """How many classes an answer lists when the request does not say."""
    max_batch: int = env("DYNOSERVE_MAX_BATCH", 16)
    """Most images one request may carry."""
    max_image_bytes: int = env("DYNOSERVE_MAX_IMAGE_BYTES", 8 * 1024 * 1024)
    """Largest image accepted, counted while streaming (Content-Length is not trusted)."""
    max_image_pixels: int = env("DYNOSERVE_MAX_IMAGE_PIXELS", 40_000_000)
    """Largest width x height accepted, checked from the header before decoding."""
    max_request_bytes: int = env("DYNOSERVE_MAX_REQUEST_BYTES", 12 * 1024 * 1024)
    """Largest request body (JSON with base64 images or multipart upload)."""
    memory_budget_bytes: int = env("DYNOSERVE_MEMORY_BUDGET_BYTES", 128 * 1024 * 1024)
    """Bytes requests may hold at once: bodies, decoded and fetched images and their copies
    for the model server, reserved before a body is read; past it 503 memory_budget, past a
    client's fair share 429 (128 MiB fits a 512 MB dyno beside TF Serving: docs/gateway.md)."""
    memory_wait_s: float = env("DYNOSERVE_MEMORY_WAIT_S", 10.0)
    """How long a request waits for a full memory budget before 503 memory_budget (its body
    waits in waitress's temp file, not in memory; spent from the request's deadline); a client
    over its fair share is refused at once."""
    answer_cache_bytes: int = env("DYNOSERVE_ANSWER_CACHE_BYTES", 16 * 1024 * 1024)
    """Bytes of answers kept for images classified before (keyed by their SHA-256, model,
    version and signature; docs/answer-cache.md); 0 turns the cache off. 16 MiB holds ~3,700
    answers of a 1,000-class model (~30,000 of the 3-class demo) and keeps the demo dyno's
    measured peak (464 MiB, docs/sizing.md) under 512 MB."""
    fetch_connect_timeout_s: float = env("DYNOSERVE_FETCH_CONNECT_TIMEOUT_S", 3.0)
    """Timeout for connecting to an image host."""
    fetch_read_timeout_s: float = env("DYNOSERVE_FETCH_READ_TIMEOUT_S", 5.0)
    """Timeout for each read from an image host."""
    fetch_total_timeout_s: float = env("DYNOSERVE_FETCH_TOTAL_TIMEOUT_S", 8.0)
    """Time budget for one image fetch, redirects included (ends earlier with the request's
    deadline)."""
    max_fetches: int = env("DYNOSERVE_MAX_FETCHES", 256)
    """Image fetches in progress at once (waiting on image hosts costs a thread and a socket,
    not model capacity); past it 503 `fetch_capacity`, past a client's fair share 429."""
    fetch_max_redirects: int = env("DYNOSERVE_FETCH_MAX_REDIRECTS", 3)
    """Redirects followed per fetch; each hop is checked again."""
    fetch_allow_hosts: tuple[str, ...] = env("DYNOSERVE_FETCH_ALLOW_HOSTS", ())
    """If set, only these hosts (".example.com" matches subdomains) or origins
    ("https://images.example.com:8443": scheme, host and port must all match) may be fetched."""
    fetch_allow_private: bool = env("DYNOSERVE_FETCH_ALLOW_PRIVATE", False)
    """Allow loopback and private addresses (tests, benchmarks, private networks only)."""
    fetch_keepalive: int = env("DYNOSERVE_FETCH_KEEPALIVE", 32)
    """Idle connections to image hosts kept for reuse, all hosts together (at most 4 per host
    and address, each for at most 20 s); every request is still resolved and vetted first.
    0 opens a new connection for every request."""
    api_keys: tuple[str, ...] = env("DYNOSERVE_API_KEYS", (), secret=True)
    """If set, API requests need one of these keys (Bearer token or X-API-Key)."""
    trust_x_forwarded_for: bool = env("DYNOSERVE_TRUST_X_FORWARDED_FOR", True)
    """Take a client's address from the last X-Forwarded-For entry (Heroku's router appends the
    real peer there); turn off when clients reach the gateway directly, or they choose it."""
    max_in_flight: int = env("DYNOSERVE_MAX_IN_FLIGHT", 32)
    """Images in prediction at once (a batch of n counts n); more wait in the admission queue."""
    max_queue: int = env("DYNOSERVE_MAX_QUEUE", 256)
    """Images that may wait in the admission queue; past it requests are refused with 503."""
    admission_budget_s: float = env("DYNOSERVE_ADMISSION_BUDGET_S", 12.0)
    """Refuse a request (503) when its estimated time to answer is over this or over what is
    left of its deadline; also the longest it waits in the queue (<= the request timeout)."""
    threads: int = env("DYNOSERVE_THREADS", 0)
    """Waitress worker threads; 0 means max_fetches + max_in_flight + max_queue + 8 (a thread for
    every request fetching, waiting or predicting, so none waits in waitress's own queue)."""
    backlog: int = env("DYNOSERVE_BACKLOG", 2048)
    """Listen backlog; a small one stalls connection bursts."""
    client_timeout_s: int = env("DYNOSERVE_CLIENT_TIMEOUT_S", 10)
    """Seconds a client connection may stay silent (an incomplete request body included) before
    it is closed; waitress buffers bodies itself, so such a client never holds a worker."""
    retry_after_s: int = env("DYNOSERVE_RETRY_AFTER_S", 1)
    """Retry-After seconds sent with 503 answers."""
    shutdown_timeout_s: float = env("DYNOSERVE_SHUTDOWN_TIMEOUT_S", 12.0)
    """On SIGTERM, how long in-flight requests may finish (supervisord stopwaitsecs is 14 s)."""
    log_level: str = env("DYNOSERVE_LOG_LEVEL", "INFO")
    """Python log level of the JSON logs on stdout."""
    sync_status_file: Path = env(
        "DYNOSERVE_SYNC_STATUS_FILE",
        status_file(DEFAULT_BASE_PATH),
        derive=lambda read: status_file(read["model_base_path"]),
    )
    """Status file written by sync; exported in /metrics when present."""

    @property
    def rollouts_file(self) -> Path:
        """Weights of weighted rollouts, written by sync beside models.config (docs/rollouts.md)."""
        return rollouts_file(self.model_config_file.parent)

    @property
    def worker_threads(self) -> int:
        """Threads waitress runs: the explicit setting, or one per request that may be fetching,
        waiting or admitted plus headroom, so a request past a bound is refused at once instead
        of waiting in waitress's own queue for a thread, and probes always find one."""
        return self.threads or self.max_fetches + self.max_in_flight + self.max_queue + 8

    def _validate_memory_budget(self) -> None:
        """The budget must fit the largest body the gateway accepts, or such a request could
        never be served."""
        largest = largest_body_cost(self.max_request_bytes)
        if self.memory_wait_s < 0:
            wait = self.memory_wait_s
            raise ConfigError(f"DYNOSERVE_MEMORY_WAIT_S must be 0 or more, got {wait}")
        if self.memory_budget_bytes < largest:
            raise ConfigError(
                f"DYNOSERVE_MEMORY_BUDGET_BYTES ({self.memory_budget_bytes}) is below what the "
                f"largest body (DYNOSERVE_MAX_REQUEST_BYTES {self.max_request_bytes}) holds "
                f"at its peak ({largest} bytes)"
            )

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
            "DYNOSERVE_REQUEST_TIMEOUT_S": self.request_timeout_s,
            "DYNOSERVE_MAX_FETCHES": self.max_fetches,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        self._validate_memory_budget()
        if self.max_queue < 0:
            raise ConfigError(f"DYNOSERVE_MAX_QUEUE must be 0 or more, got {self.max_queue}")
        if self.fetch_keepalive < 0:
            kept = self.fetch_keepalive
            raise ConfigError(f"DYNOSERVE_FETCH_KEEPALIVE must be 0 (off) or more, got {kept}")
        if self.answer_cache_bytes < 0:
            size = self.answer_cache_bytes
            raise ConfigError(f"DYNOSERVE_ANSWER_CACHE_BYTES must be 0 (off) or more, got {size}")
        if self.max_fetches < self.max_batch:
            raise ConfigError(
                f"DYNOSERVE_MAX_FETCHES ({self.max_fetches}) must be at least DYNOSERVE_MAX_BATCH "
                f"({self.max_batch}): a batch takes a fetch slot per URL"
            )
        if self.request_timeout_s >= 30:
            raise ConfigError("DYNOSERVE_REQUEST_TIMEOUT_S must stay below Heroku's 30 s limit")
        if self.admission_budget_s > self.request_timeout_s:
            raise ConfigError(
                "DYNOSERVE_ADMISSION_BUDGET_S is the queue's part of a request's deadline: it "
                f"must not exceed DYNOSERVE_REQUEST_TIMEOUT_S ({self.request_timeout_s:g} s)"
            )
        if self.grpc_deadline_s >= 30:
            raise ConfigError("DYNOSERVE_GRPC_DEADLINE_S must stay below Heroku's 30 s limit")
        if self.grpc_max_attempts > 5:
            raise ConfigError("DYNOSERVE_GRPC_MAX_ATTEMPTS is capped at 5 by gRPC")
        for entry in self.fetch_allow_hosts:
            try:
                parse_allow_entry(entry)
            except ValueError as exc:
                raise ConfigError(f"DYNOSERVE_FETCH_ALLOW_HOSTS: {exc}") from exc
