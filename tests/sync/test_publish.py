"""Publishing to the moto server: leftovers of a dead publish are replaced, published versions
are never overwritten (the marker is written with If-None-Match: *)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelrepo.exportrecord import RECORD_NAME
from sync.errors import PublishError
from sync.marker import MARKER_NAME, build_marker
from sync.publish import Publisher, PublishRequest, pick_version
from sync.settings import Settings
from tests.support import REPO_ROOT
from tests.sync.helpers import make_version


def test_unfinished_upload_is_replaced_then_version_is_immutable(env: dict, s3: Any) -> None:
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    bucket = env["BUCKETEER_BUCKET_NAME"]
    s3.put_object(Bucket=bucket, Key="models/cats/1/saved_model.pb", Body=b"half")
    folder = make_version(settings.export_dir, "cats", 1)
    publisher = Publisher(settings.s3)
    marker = publisher.publish(pick_version(settings.export_dir, "cats", None))
    body = s3.get_object(Bucket=bucket, Key="models/cats/1/saved_model.pb")["Body"].read()
    assert body == (folder / "saved_model.pb").read_bytes()
    with pytest.raises(PublishError, match="already published"):
        publisher.publish(PublishRequest("cats", 1, folder))
    # Two publishers racing past the check: the second marker write must lose.
    with pytest.raises(PublishError, match="by someone else"):
        publisher._put_marker(marker, "models/cats/1/")
    assert MARKER_NAME in {
        item["Key"].rsplit("/", 1)[1] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]
    }


def test_pick_version_takes_the_newest_export(tmp_path: Path) -> None:
    make_version(tmp_path, "cats", 2)
    make_version(tmp_path, "cats", 10)
    (tmp_path / "cats" / ".staging-11").mkdir()
    assert pick_version(tmp_path, "cats", None).version == 10
    assert pick_version(tmp_path, "cats", 2).folder == tmp_path / "cats" / "2"
    with pytest.raises(PublishError, match="not an exported version"):
        pick_version(tmp_path, "cats", 3)


def test_marker_lists_every_file_with_its_digest(tmp_path: Path) -> None:
    folder = make_version(tmp_path, "cats", 1)
    marker = build_marker("cats", 1, folder)
    assert {e.path for e in marker.files} == {
        "saved_model.pb",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
        "assets/labels.txt",
        RECORD_NAME,
    }
    assert marker.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_bucket_secrets_file_the_readme_suggests_is_ignored_by_git() -> None:
    """README: `heroku config --shell | grep BUCKETEER >> .env.publish` before make publish."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    for name in (".env.publish", ".env", ".env.staging"):
        result = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", name],
            cwd=REPO_ROOT,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"{name} would be committed: add it to .gitignore"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("variables/variables.data-00000-of-00001", "bytes, export wrote"),  # truncated
        ("saved_model.pb", "SHA-256 differs"),  # same size, other bytes
    ],
)
def test_publish_refuses_files_changed_since_the_export(
    env: dict, s3: Any, damage: str, why: str
) -> None:
    """Issue 10 (b): a truncated variables file was uploaded with a valid marker."""
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    folder = make_version(settings.export_dir, "cats", 1)
    path = folder / damage
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if "variables" in damage else bytes(len(data)))
    with pytest.raises(PublishError, match=why):
        Publisher(settings.s3).publish(pick_version(settings.export_dir, "cats", None))
    assert "Contents" not in s3.list_objects_v2(Bucket=env["BUCKETEER_BUCKET_NAME"])
