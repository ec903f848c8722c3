"""The bucket as a model source; botocore's exceptions become ours here and nowhere else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from s3transfer.exceptions import RetriesExceededError, S3UploadFailedError
from s3transfer.subscribers import BaseSubscriber

from modelrepo import MANIFEST_NAME, is_model_name, parse_version
from modelrepo.manifest import DEFAULT_MANIFEST, ManifestError, ModelManifest, parse_manifest
from sync.errors import (
    BucketNotFound,
    CredentialsError,
    SourceError,
    SourceUnavailable,
    VersionError,
)
from sync.marker import MARKER_NAME, FileEntry, Marker, parse_marker
from sync.progress import Progress
from sync.settings import S3Settings
from sync.source import Listing

log = logging.getLogger(__name__)

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
_FIX_CREDENTIALS = (
    "check BUCKETEER_AWS_ACCESS_KEY_ID / BUCKETEER_AWS_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY) and that the key may read the bucket"
)


@contextlib.contextmanager
def s3_errors(settings: S3Settings, action: str) -> Iterator[None]:
    """Translate botocore failures into SyncErrors that say what to fix."""
    where = settings.describe()
    try:
        yield
    except NoCredentialsError as exc:
        raise CredentialsError(f"{action} {where}: no credentials; {_FIX_CREDENTIALS}") from exc
    except (EndpointConnectionError, ConnectionError, ReadTimeoutError) as exc:
        raise SourceUnavailable(
            f"{action} {where}: cannot reach the S3 endpoint ({exc}); check the network, "
            "BUCKETEER_AWS_REGION and DYNOSERVE_S3_ENDPOINT_URL"
        ) from exc
    except ClientError as exc:
        raise _client_error(exc, action, where) from exc
    except RetriesExceededError as exc:
        raise SourceUnavailable(f"{action} {where}: gave up after retries ({exc})") from exc
    except (BotoCoreError, S3UploadFailedError) as exc:
        raise SourceError(f"{action} {where}: {exc}") from exc


def _client_error(exc: ClientError, action: str, where: str) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = f"{action} {where}: {code} {error.get('Message', '')}".rstrip()
    if code in _CREDENTIAL_CODES:
        return CredentialsError(f"{message}; {_FIX_CREDENTIALS}")
    if code in ("NoSuchBucket", "404") and "Key" not in error:
        return BucketNotFound(f"{message}; check BUCKETEER_BUCKET_NAME")
    if code.startswith("5") or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return SourceUnavailable(message)
    return SourceError(message)


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for the settings; short timeouts so a dead endpoint fails the boot fast."""
    config = Config(
        region_name=settings.region,
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=settings.max_concurrency + 4,
        # Bucketeer and moto both accept path-style; virtual hosts need DNS we may not have.
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def transfer_config(settings: S3Settings) -> TransferConfig:
    return TransferConfig(
        max_concurrency=settings.max_concurrency,
        max_bandwidth=settings.max_bandwidth,
        # Ranged GETs in parallel for the big variables shard (13 MB in the benchmark model).
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=4 * 1024 * 1024,
    )


class ProgressSubscriber(BaseSubscriber):
    """Feeds s3transfer's byte counts into a Progress."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self.progress.add(bytes_transferred)


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    etag: str


class S3Source:
    """Models under `s3://<bucket>/<prefix>/<model>/<version>/`."""

    def __init__(self, settings: S3Settings, client: Any = None) -> None:
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        self._root = f"{settings.prefix}/" if settings.prefix else ""
        # Published versions are immutable, so a marker or manifest is only re-read when its
        # ETag changes: an idle watch pass costs one LIST request.
        self._cache: dict[str, tuple[str, Any]] = {}

    def describe(self) -> str:
        return self.settings.describe()

    def close(self) -> None:
        self.client.close()

    def scan(self) -> Listing:
        objects = self._list_objects()
        listing = Listing()
        grouped = self._group(objects, listing)
        for model, versions in sorted(grouped.items()):
            manifest = self._manifest(model, versions.pop(0, {}), listing)
            if manifest is not None:
                listing.manifests[model] = manifest
            listing.complete[model] = {}
            for version, files in sorted(versions.items()):
                self._take_version(model, version, files, listing)
        return listing

    def _list_objects(self) -> list[_Object]:
        objects: list[_Object] = []
        with s3_errors(self.settings, "listing"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=self._root):
                for item in page.get("Contents", []):
                    objects.append(_Object(item["Key"], int(item["Size"]), item.get("ETag", "")))
        return objects

    def _group(
        self, objects: list[_Object], listing: Listing
    ) -> dict[str, dict[int, dict[str, _Object]]]:
        """model -> version -> path-in-version -> object; version 0 holds model-level files."""
        grouped: dict[str, dict[int, dict[str, _Object]]] = {}
        for obj in objects:
            parts = obj.key[len(self._root) :].split("/", 2)
            if len(parts) < 2 or not is_model_name(parts[0]):
                continue
            model = parts[0]
            if len(parts) == 2:
                grouped.setdefault(model, {}).setdefault(0, {})[parts[1]] = obj
                continue
            version = parse_version(parts[1])
            if version is not None and parts[2]:
                grouped.setdefault(model, {}).setdefault(version, {})[parts[2]] = obj
        return grouped

    def _manifest(
        self, model: str, files: dict[str, _Object], listing: Listing
    ) -> ModelManifest | None:
        obj = files.get(MANIFEST_NAME)
        if obj is None:
            return DEFAULT_MANIFEST
        try:
            manifest: ModelManifest = self._cached(obj, lambda body: parse_manifest(body, model))
        except ManifestError as exc:
            listing.problems[model] = str(exc)
            return None
        return manifest

    def _take_version(
        self, model: str, version: int, files: dict[str, _Object], listing: Listing
    ) -> None:
        marker_obj = files.get(MARKER_NAME)
        if marker_obj is None:
            listing.incomplete.setdefault(model, []).append(version)
            return
        try:
            marker: Marker = self._cached(marker_obj, lambda b: parse_marker(b, model, version))
            _check_listed(marker, files)
        except VersionError as exc:
            listing.problems[f"{model}/{version}"] = str(exc)
            return
        listing.complete[model][version] = marker

    def _cached(self, obj: _Object, parse: Any) -> Any:
        hit = self._cache.get(obj.key)
        if hit is not None and hit[0] == obj.etag:
            return hit[1]
        with s3_errors(self.settings, f"reading {obj.key} from"):
            body = self.client.get_object(Bucket=self.settings.bucket, Key=obj.key)["Body"].read()
        value = parse(body)
        self._cache[obj.key] = (obj.etag, value)
        return value

    def download(
        self, marker: Marker, entries: Sequence[FileEntry], staging: Path, progress: Progress
    ) -> None:
        prefix = f"{self._root}{marker.model}/{marker.version}/"
        subscriber = ProgressSubscriber(progress)
        with (
            s3_errors(self.settings, f"downloading {marker.model}/{marker.version} from"),
            create_transfer_manager(self.client, transfer_config(self.settings)) as manager,
        ):
            futures = []
            for entry in entries:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                futures.append(
                    manager.download(
                        self.settings.bucket, prefix + entry.path, str(target), None, [subscriber]
                    )
                )
            for future in futures:
                future.result()


def _check_listed(marker: Marker, files: dict[str, _Object]) -> None:
    """Every file the marker names must be in the listing with the size the marker says."""
    for entry in marker.files:
        obj = files.get(entry.path)
        if obj is None:
            raise VersionError(f"{marker.model}/{marker.version}: {entry.path} missing in bucket")
        if obj.size != entry.size:
            raise VersionError(
                f"{marker.model}/{marker.version}: {entry.path} is {obj.size} bytes in the "
                f"bucket, the marker says {entry.size}"
            )
