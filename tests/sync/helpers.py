"""Test helpers: stand-in model versions and publishing them. The fake model-server status API
they once held is devtools/fakeserver.py (bench/sync_measure.py uses it too).

The stand-in versions are not real SavedModels (sync never loads models, it only moves and
verifies files): random bytes named like a SavedModel's files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelrepo import MANIFEST_NAME
from modelrepo.exportrecord import write_record
from modelrepo.modelconfig import read_previous
from sync.marker import MARKER_NAME, Marker
from sync.publish import Publisher, PublishRequest
from sync.settings import Settings


def make_version(
    root: Path, model: str, version: int, size: int = 4096, labels: str = "cat\ndog\n"
) -> Path:
    """A stand-in version folder: saved_model.pb, variables/, assets/ with random bytes, and
    the export record (modelrepo/exportrecord.py) export writes."""
    folder = root / model / str(version)
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / "saved_model.pb").write_bytes(os.urandom(256) + str(version).encode())
    (folder / "variables" / "variables.index").write_bytes(os.urandom(64))
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(size))
    (folder / "assets" / "labels.txt").write_text(labels)
    write_record(folder, verified=True)  # as export does once it has checked the version
    return folder


def publish(env: Mapping[str, str], model: str, version: int, size: int = 4096) -> Path:
    """Export a stand-in version under the export dir and publish it for real to the bucket."""
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    folder = make_version(settings.export_dir, model, version, size)
    Publisher(settings.s3).publish(PublishRequest(model, version, folder))
    return folder


def upload_as_is(s3: Any, bucket: str, prefix: str, marker: Marker, folder: Path) -> None:
    """What a broken or hostile publisher does: the files, then the marker, no checks."""
    for entry in marker.files:
        body = (folder / entry.path).read_bytes()
        s3.put_object(Bucket=bucket, Key=prefix + entry.path, Body=body)
    s3.put_object(Bucket=bucket, Key=prefix + MARKER_NAME, Body=marker.to_json().encode())


def put_manifest(s3: Any, env: Mapping[str, str], model: str, body: dict[str, Any]) -> None:
    key = f"models/{model}/{MANIFEST_NAME}"
    s3.put_object(Bucket=env["BUCKETEER_BUCKET_NAME"], Key=key, Body=json.dumps(body).encode())


def served(env: Mapping[str, str]) -> dict[str, tuple[tuple[int, ...], dict[str, int]]]:
    """What the written models.config serves: model -> (versions, labels)."""
    path = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "models.config"
    return {n: (m.versions, dict(m.labels)) for n, m in read_previous(path).items()}


def version_dirs(env: Mapping[str, str], model: str) -> list[int]:
    folder = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
