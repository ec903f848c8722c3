"""The sync process's configuration, read once from the environment in main()."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sync.errors import ConfigError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Where the published models live: a Bucketeer (or any S3-compatible) bucket."""

    bucket: str
    """Bucket name (BUCKETEER_BUCKET_NAME)."""
    prefix: str
    """Key prefix above `<model>/<version>/`, without slashes at either end; may be empty."""
    region: str
    """AWS region of the bucket (BUCKETEER_AWS_REGION, then AWS_REGION / AWS_DEFAULT_REGION)."""
    access_key_id: str | None
    """Access key (BUCKETEER_AWS_ACCESS_KEY_ID, then AWS_ACCESS_KEY_ID); None lets boto3 look."""
    secret_access_key: str | None
    """Secret key (BUCKETEER_AWS_SECRET_ACCESS_KEY, then AWS_SECRET_ACCESS_KEY)."""
    endpoint_url: str | None
    """S3 API endpoint override for MinIO, moto or other S3-compatible servers."""
    max_concurrency: int
    """Parallel transfer threads (boto3 transfer manager)."""
    max_bandwidth: int | None
    """Transfer bandwidth cap in bytes per second, so a big sync cannot starve the dyno."""

    def url(self, key: str = "") -> str:
        """The s3:// URL of `key` under the prefix (of the prefix itself without a key)."""
        path = "/".join(part for part in (self.prefix, key) if part)
        return f"s3://{self.bucket}/{path}"

    def describe(self, key: str = "") -> str:
        """`url(key)`, with the endpoint when it is not AWS's (never glued onto the key)."""
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.url(key)}{where}"


@dataclass(frozen=True)
class Settings:
    """Everything `python -m sync` needs; built by `from_env` in main() and passed down."""

    model_base_path: Path
    """Local model repository the model server reads (TF Serving's base path layout)."""
    export_dir: Path
    """Local source used when no bucket is configured: the folder `make export` writes."""
    s3: S3Settings | None
    """The bucket to sync from; None means sync from `export_dir`."""
    config_file: Path
    """The ModelServerConfig text file sync writes for the model server."""
    status_file: Path
    """JSON status file the gateway reads for /metrics (schema in docs/sync.md)."""
    poll_interval: float
    """Seconds between watch-mode passes."""
    model_server_rest_url: str
    """Model server REST root, asked which versions it still serves before deleting any."""
    labels_for_unavailable: bool
    """True when the model server runs with --allow_version_labels_for_unavailable_models."""
    checksum_retries: int
    """Extra download attempts for a file whose checksum does not match before the version is
    skipped."""
    prune_missing: bool = False
    """Stop serving and delete models gone from the source (DYNOSERVE_SYNC_PRUNE); never
    while the source lists no model at all."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        base = Path(env.get("DYNOSERVE_MODEL_BASE_PATH") or "var/models")
        return cls(
            model_base_path=base,
            export_dir=Path(env.get("DYNOSERVE_EXPORT_DIR") or "exports"),
            s3=_s3_from_env(env),
            config_file=Path(env.get("DYNOSERVE_MODEL_CONFIG_FILE") or base / "models.config"),
            status_file=Path(env.get("DYNOSERVE_SYNC_STATUS_FILE") or base / "sync-status.json"),
            poll_interval=_number(env, "DYNOSERVE_SYNC_INTERVAL", 30.0, minimum=0.1),
            model_server_rest_url=(
                env.get("DYNOSERVE_MODEL_SERVER_REST_URL") or "http://127.0.0.1:8501"
            ).rstrip("/"),
            labels_for_unavailable=_flag(env, "DYNOSERVE_LABELS_FOR_UNAVAILABLE_MODELS"),
            checksum_retries=int(_number(env, "DYNOSERVE_SYNC_RETRIES", 2, minimum=0)),
            prune_missing=_flag(env, "DYNOSERVE_SYNC_PRUNE"),
        )

    def describe_source(self) -> str:
        return self.s3.describe() if self.s3 else f"local folder {self.export_dir}"


def _s3_from_env(env: Mapping[str, str]) -> S3Settings | None:
    bucket = env.get("BUCKETEER_BUCKET_NAME")
    if not bucket:
        return None
    bandwidth = _number(env, "DYNOSERVE_SYNC_MAX_BANDWIDTH", 0, minimum=0)
    return S3Settings(
        bucket=bucket,
        prefix=(env.get("DYNOSERVE_S3_PREFIX", "models")).strip("/"),
        region=_first(env, "BUCKETEER_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
        or DEFAULT_REGION,
        access_key_id=_first(env, "BUCKETEER_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        secret_access_key=_first(env, "BUCKETEER_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        endpoint_url=_first(
            env, "DYNOSERVE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        ),
        max_concurrency=int(_number(env, "DYNOSERVE_SYNC_CONCURRENCY", 8, minimum=1)),
        max_bandwidth=int(bandwidth) or None,
    )


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")
