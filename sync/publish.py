"""`python -m sync.publish` (`make publish`): upload exported versions, completion marker last,
then the model's manifest (labels) if the export folder has one and the bucket has none.

A version whose files differ from its export record (sizes and SHA-256 that `make export`
wrote once the version had been reloaded and checked) is refused before anything is uploaded.

Files go up in parallel through boto3's transfer manager with a progress bar; the marker (the
file list with sizes and SHA-256) is written only after every file is in the bucket with the
right size, and with `If-None-Match: *`, so a published version is never overwritten, even by
two publishers racing. Sync ignores a version until its marker exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import create_transfer_manager
from botocore.exceptions import ClientError

from envsettings import SettingsError
from modelrepo import MANIFEST_NAME, MODEL_NAME_RULE, is_model_name, parse_version
from modelrepo.exportrecord import RECORD_NAME, describe_folder, read_record
from modelrepo.manifest import ModelManifest
from sync.cli import start_tool
from sync.errors import ConfigError, PublishError, SyncError
from sync.manifest_store import BucketManifests, FolderManifests
from sync.marker import MARKER_NAME, Marker, build_marker, check_layout
from sync.progress import Progress
from sync.s3 import ProgressSubscriber, make_client, s3_errors, transfer_config
from sync.settings import S3Settings, Settings

log = logging.getLogger("sync.publish")


@dataclass(frozen=True)
class PublishRequest:
    """What to publish: one local version folder."""

    name: str
    version: int
    folder: Path


def pick_versions(
    export_dir: Path, name: str, version: int | None, every: bool
) -> list[PublishRequest]:
    """`--all`: every exported version, oldest first; else the one `pick_version` picks."""
    if not every:
        return [pick_version(export_dir, name, version)]
    if version is not None:
        raise ConfigError("--all publishes every exported version: leave out --version")
    found = [parse_version(p.name) for p in (export_dir / name).glob("*") if p.is_dir()]
    versions = sorted(v for v in found if v is not None)
    if not versions:
        raise PublishError(f"no exported version in {export_dir / name}; run `make export` first")
    return [pick_version(export_dir, name, v) for v in versions]


def pick_version(export_dir: Path, name: str, version: int | None) -> PublishRequest:
    """The requested version, or the newest exported one (the one `make export` wrote last)."""
    if not is_model_name(name):
        raise ConfigError(f"model name {name!r}: use {MODEL_NAME_RULE}")
    model_dir = export_dir / name
    if version is None:
        found = [parse_version(p.name) for p in model_dir.glob("*") if p.is_dir()]
        versions = sorted(v for v in found if v is not None)
        if not versions:
            raise PublishError(f"no exported version in {model_dir}; run `make export` first")
        version = versions[-1]
    folder = model_dir / str(version)
    if not (folder / "saved_model.pb").is_file():
        raise PublishError(f"{folder} is not an exported version (no saved_model.pb)")
    return PublishRequest(name, version, folder)


def check_export(request: PublishRequest) -> None:
    """Refuse a folder whose files are not the ones export verified (its export record)."""
    what = f"{request.name}/{request.version} ({request.folder})"
    try:
        record = read_record(request.folder)
    except ValueError as exc:
        raise PublishError(f"{what}: unreadable export record: {exc}") from exc
    if record is None:
        log.warning(
            "%s has no export record (%s; older exports have none): its files cannot be "
            "checked against what export verified; export it again to have them checked",
            what, RECORD_NAME,
        )  # fmt: skip
        return
    if not record.verified:
        raise PublishError(f"{what} was exported without verification; export it again")
    changed = record.differences(describe_folder(request.folder, record.verified))
    if changed:
        raise PublishError(
            f"{what} is not what export wrote and verified: {'; '.join(changed[:5])}; "
            "nothing was uploaded, export the version again"
        )


class Publisher:
    """Uploads versions to `s3://<bucket>/<prefix>/<model>/<version>/`."""

    def __init__(self, settings: S3Settings, client: Any = None, bar: bool = False) -> None:
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        self.bar = bar
        root = f"{settings.prefix}/" if settings.prefix else ""
        self._root = root

    def publish(self, request: PublishRequest) -> Marker:
        check_export(request)
        marker = build_marker(request.name, request.version, request.folder)
        check_layout(marker)
        prefix = f"{self._root}{request.name}/{request.version}/"
        self._refuse_published(prefix, request)
        started = time.monotonic()
        self._upload(marker, request.folder, prefix)
        self._check_uploaded(marker, prefix)
        self._put_marker(marker, prefix)
        log.info(
            "published %s/%s: %d files, %.1f MB in %.1f s to %s",
            request.name, request.version, len(marker.files), marker.total_bytes / 2**20,
            time.monotonic() - started, self.settings.describe(prefix[len(self._root):]),
        )  # fmt: skip
        return marker

    def published(self, request: PublishRequest) -> bool:
        """True when the version's completion marker is in the bucket."""
        return MARKER_NAME in self._existing(f"{self._root}{request.name}/{request.version}/")

    def _existing(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        with s3_errors(self.settings, "listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(prefix) :]] = int(item["Size"])
        return found

    def _refuse_published(self, prefix: str, request: PublishRequest) -> None:
        existing = self._existing(prefix)
        if MARKER_NAME in existing:
            raise PublishError(
                f"{request.name}/{request.version} is already published and versions are "
                "immutable; export a new version (make export ...) and publish that"
            )
        if existing:
            log.warning(
                "%s/%s: %d objects from an unfinished publish (no completion marker); replacing",
                request.name, request.version, len(existing),
            )  # fmt: skip

    def _upload(self, marker: Marker, folder: Path, prefix: str) -> None:
        what = f"{marker.model}/{marker.version}"
        progress = Progress(what, marker.total_bytes, log, bar=self.bar)
        subscriber = ProgressSubscriber(progress)
        with (
            s3_errors(self.settings, f"uploading {what} to"),
            create_transfer_manager(self.client, transfer_config(self.settings)) as manager,
        ):
            bucket = self.settings.bucket
            futures = [
                manager.upload(str(folder / e.path), bucket, prefix + e.path, None, [subscriber])
                for e in marker.files
            ]
            for future in futures:
                future.result()
        progress.finish(f"{len(marker.files)} files uploaded")

    def _check_uploaded(self, marker: Marker, prefix: str) -> None:
        existing = self._existing(prefix)
        for entry in marker.files:
            if existing.get(entry.path) != entry.size:
                raise PublishError(
                    f"{marker.model}/{marker.version}: {entry.path} did not arrive whole; "
                    "nothing was published, run make publish again"
                )

    def _put_marker(self, marker: Marker, prefix: str) -> None:
        try:
            with s3_errors(self.settings, "writing the completion marker to"):
                self.client.put_object(
                    Bucket=self.settings.bucket,
                    Key=prefix + MARKER_NAME,
                    Body=marker.to_json().encode(),
                    ContentType="application/json",
                    IfNoneMatch="*",
                )
        except SyncError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _is_precondition(cause):
                raise PublishError(
                    f"{marker.model}/{marker.version} was published by someone else meanwhile"
                ) from exc
            raise


def _is_precondition(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return str(error.get("Code")) in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def carry_manifest(
    store: BucketManifests, model: str, local: ModelManifest, source: str, replace: bool
) -> None:
    """Upload the export folder's manifest, unless the bucket has a different one already.

    The bucket's manifest is what dynos serve and `make labels` edits it there, so a stale
    copy in the export folder must not move labels back; `replace` says it should.
    """
    remote = store.read(model)
    where = store.describe(model)
    if remote == local:
        log.info("manifest %s unchanged: %s", where, local.describe())
        return
    if remote is not None and not replace:
        log.warning(
            "kept the bucket's manifest %s (%s); %s differs (%s): change the bucket's with "
            "make labels, or publish with ARGS=--replace-manifest to upload yours",
            where, remote.describe(), source, local.describe(),
        )  # fmt: skip
        return
    published = store.versions(model)
    for label, version in sorted(local.labels.items()):
        if version not in published:
            log.warning(
                "label %r -> %s: %s/%s is not in the bucket; sync ignores the label until it is "
                "(make publish NAME=%s VERSION=%s)",
                label, version, model, version, model, version,
            )  # fmt: skip
    store.write(model, local)
    log.info("wrote manifest %s: %s", where, local.describe())


def publish_all(
    settings: S3Settings, export_dir: Path, args: argparse.Namespace, bar: bool
) -> None:
    """The versions the arguments name, then the export folder's manifest if there is one."""
    requests = pick_versions(export_dir, args.name, args.version, args.all)
    folder = FolderManifests(export_dir)
    local = folder.read(args.name)  # a malformed manifest stops the publish before any upload
    publisher = Publisher(settings, bar=bar)
    for request in requests:
        if args.all and publisher.published(request):
            log.info("%s/%s is published already; skipping it", request.name, request.version)
            continue
        publisher.publish(request)
    if local is not None:
        store = BucketManifests(settings, publisher.client)
        carry_manifest(store, args.name, local, folder.describe(args.name), args.replace_manifest)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sync.publish",
        description="Upload an exported model version to the bucket (completion marker last).",
    )
    parser.add_argument("--name", required=True, help="model name (folder under the export dir)")
    parser.add_argument("--export-dir", type=Path, help="default: DYNOSERVE_EXPORT_DIR or exports")
    parser.add_argument("--version", type=int, default=None, help="default: the newest export")
    parser.add_argument(
        "--all", action="store_true", help="every exported version not in the bucket yet"
    )
    parser.add_argument(
        "--replace-manifest",
        action="store_true",
        help=f"upload <export-dir>/<name>/{MANIFEST_NAME} even over a different one in the bucket",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = start_tool(parse_args, argv)
    if isinstance(args, int):
        return args
    try:
        settings = Settings.from_env(os.environ)
        if settings.s3 is None:
            raise ConfigError(
                "no bucket configured: export BUCKETEER_BUCKET_NAME, BUCKETEER_AWS_ACCESS_KEY_ID "
                "and BUCKETEER_AWS_SECRET_ACCESS_KEY (`heroku config -s` prints them) to publish"
            )
        export_dir = args.export_dir or settings.export_dir
        publish_all(settings.s3, export_dir, args, bar=sys.stderr.isatty())
    except (SyncError, SettingsError) as exc:
        log.error("publish failed: %s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
