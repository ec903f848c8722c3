"""Where each model's manifest (dynoserve-model.json) lives, with the versions it may name.

Two stores, like the two sources: the bucket (what dynos serve) and the export folder (what
`make run` serves without a bucket). `make labels` and `make publish` read and write through
them with the same settings and credentials sync uses. The schema is modelrepo/manifest.py; a
manifest that breaks it is sync's ManifestError here (exit code 78).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from modelrepo import MANIFEST_NAME, parse_version
from modelrepo.manifest import ManifestError as ManifestSchemaError
from modelrepo.manifest import ModelManifest, parse_manifest
from sync.errors import ManifestError
from sync.files import atomic_write_text
from sync.marker import MARKER_NAME
from sync.s3 import make_client, s3_errors
from sync.settings import S3Settings


def parse(body: bytes, model: str) -> ModelManifest:
    """parse_manifest, with its error as sync's (the message unchanged)."""
    try:
        return parse_manifest(body, model)
    except ManifestSchemaError as exc:
        raise ManifestError(str(exc)) from exc


class ManifestStore(Protocol):
    """Reads and writes one model's manifest; lists the model's complete versions."""

    def describe(self, model: str) -> str:
        """Where the model's manifest is, for messages."""
        ...

    def read(self, model: str) -> ModelManifest | None:
        """The model's manifest, or None when it has none; ManifestError when malformed."""
        ...

    def write(self, model: str, manifest: ModelManifest) -> None: ...

    def versions(self, model: str) -> set[int]:
        """The model's complete versions (those sync would install)."""
        ...


class BucketManifests:
    """Manifests at `s3://<bucket>/<prefix>/<model>/dynoserve-model.json`."""

    def __init__(self, settings: S3Settings, client: Any = None) -> None:
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        self._root = f"{settings.prefix}/" if settings.prefix else ""

    def describe(self, model: str) -> str:
        return self.settings.describe(f"{model}/{MANIFEST_NAME}")

    def read(self, model: str) -> ModelManifest | None:
        key = f"{self._root}{model}/{MANIFEST_NAME}"
        if key not in self._keys(model):
            return None
        with s3_errors(self.settings, f"reading {key} from"):
            body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
        return parse(body, model)

    def write(self, model: str, manifest: ModelManifest) -> None:
        key = f"{self._root}{model}/{MANIFEST_NAME}"
        with s3_errors(self.settings, f"writing {key} to"):
            self.client.put_object(
                Bucket=self.settings.bucket,
                Key=key,
                Body=manifest.render().encode(),
                ContentType="application/json",
            )

    def versions(self, model: str) -> set[int]:
        found = set()
        for key in self._keys(model):
            parts = key[len(f"{self._root}{model}/") :].split("/")
            version = parse_version(parts[0])
            if len(parts) == 2 and parts[1] == MARKER_NAME and version is not None:
                found.add(version)
        return found

    def _keys(self, model: str) -> list[str]:
        keys: list[str] = []
        with s3_errors(self.settings, "listing"):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.settings.bucket, Prefix=f"{self._root}{model}/")
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def close(self) -> None:
        self.client.close()


class FolderManifests:
    """Manifests at `<export_dir>/<model>/dynoserve-model.json` (sync's local source)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, model: str) -> str:
        return str(self.root / model / MANIFEST_NAME)

    def read(self, model: str) -> ModelManifest | None:
        path = self.root / model / MANIFEST_NAME
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ManifestError(f"{model}: cannot read {path}: {exc}") from exc
        return parse(text, model)

    def write(self, model: str, manifest: ModelManifest) -> None:
        atomic_write_text(self.root / model / MANIFEST_NAME, manifest.render())

    def versions(self, model: str) -> set[int]:
        folder = self.root / model
        if not folder.is_dir():
            return set()
        found = {
            parse_version(p.name) for p in folder.iterdir() if (p / "saved_model.pb").is_file()
        }
        return {v for v in found if v is not None}

    def close(self) -> None:
        pass
