"""The sync process's configuration, read once from the environment in main()."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import modelrepo
from envsettings import TEXT, EnvSettings, Parser, env, integer, number
from modelrepo import DEFAULT_BASE_PATH, DEFAULT_EXPORT_DIR
from modelrepo.rollouts import rollouts_file

DEFAULT_REGION = "us-east-1"
_PREFIX = Parser("a key prefix", lambda text: text.strip("/"))
_URL = Parser("a URL", lambda text: text.rstrip("/"))
_BANDWIDTH = Parser("an integer >= 0 (0: unlimited)", lambda text: integer(0).convert(text) or None)


@dataclass(frozen=True)
class S3Settings(EnvSettings):
    """Where the published models live: a Bucketeer (or any S3-compatible) bucket."""

    bucket: str = env("BUCKETEER_BUCKET_NAME", "")
    """Bucket name; empty means no bucket (sync from the export folder)."""
    prefix: str = env("DYNOSERVE_S3_PREFIX", "models", _PREFIX, keep_blank=True)
    """Key prefix above `<model>/<version>/`, without slashes at either end; may be empty."""
    region: str = env(("BUCKETEER_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"), DEFAULT_REGION)
    """AWS region of the bucket."""
    access_key_id: str | None = env(
        ("BUCKETEER_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), None, TEXT
    )
    """Access key; None lets boto3 look."""
    secret_access_key: str | None = env(
        ("BUCKETEER_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), None, TEXT, secret=True
    )
    """Secret key; None lets boto3 look."""
    endpoint_url: str | None = env(
        ("DYNOSERVE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), None, TEXT
    )
    """S3 API endpoint override for MinIO, moto or other S3-compatible servers."""
    max_concurrency: int = env("DYNOSERVE_SYNC_CONCURRENCY", 8, integer(1))
    """Parallel transfer threads (boto3 transfer manager)."""
    max_bandwidth: int | None = env("DYNOSERVE_SYNC_MAX_BANDWIDTH", None, _BANDWIDTH)
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
class Settings(EnvSettings):
    """Everything `python -m sync` needs; built by `from_env` in main() and passed down."""

    model_base_path: Path = env("DYNOSERVE_MODEL_BASE_PATH", DEFAULT_BASE_PATH)
    """Local model repository the model server reads (TF Serving's base path layout)."""
    export_dir: Path = env("DYNOSERVE_EXPORT_DIR", DEFAULT_EXPORT_DIR)
    """Local source used when no bucket is configured: the folder `make export` writes."""
    s3: S3Settings | None = None
    """The bucket to sync from (BUCKETEER_BUCKET_NAME and the S3Settings variables); None
    means sync from `export_dir`."""
    config_file: Path = env(
        "DYNOSERVE_MODEL_CONFIG_FILE",
        modelrepo.config_file(DEFAULT_BASE_PATH),
        derive=lambda read: modelrepo.config_file(read["model_base_path"]),
    )
    """The ModelServerConfig text file sync writes for the model server."""
    status_file: Path = env(
        "DYNOSERVE_SYNC_STATUS_FILE",
        modelrepo.status_file(DEFAULT_BASE_PATH),
        derive=lambda read: modelrepo.status_file(read["model_base_path"]),
    )
    """JSON status file the gateway reads for /metrics (schema in docs/sync.md)."""
    poll_interval: float = env("DYNOSERVE_SYNC_INTERVAL", 30.0, number(0.1))
    """Seconds between watch-mode passes."""
    model_server_rest_url: str = env(
        "DYNOSERVE_MODEL_SERVER_REST_URL", "http://127.0.0.1:8501", _URL
    )
    """Model server REST root, asked which versions it still serves before deleting any."""
    labels_for_unavailable: bool = env("DYNOSERVE_LABELS_FOR_UNAVAILABLE_MODELS", False)
    """True when the model server runs with --allow_version_labels_for_unavailable_models."""
    checksum_retries: int = env("DYNOSERVE_SYNC_RETRIES", 2, integer(0))
    """Extra download attempts for a file whose checksum does not match before the version is
    skipped."""
    prune_missing: bool = env("DYNOSERVE_SYNC_PRUNE", False)
    """Stop serving and delete models gone from the source; never while the source lists no
    model at all."""

    @property
    def rollouts_file(self) -> Path:
        """The manifests' weights sync hands the gateway (modelrepo/rollouts.py), beside
        models.config."""
        return rollouts_file(self.config_file.parent)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The sync settings, with the bucket's when BUCKETEER_BUCKET_NAME is set."""
        s3 = S3Settings.from_env(environ)
        return replace(super().from_env(environ), s3=s3 if s3.bucket else None)

    def describe_source(self) -> str:
        return self.s3.describe() if self.s3 else f"local folder {self.export_dir}"
