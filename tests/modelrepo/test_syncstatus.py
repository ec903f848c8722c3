"""The status file's schema (modelrepo.syncstatus): what sync writes reads back the same, the
numbers /metrics exports, and a reader that takes a damaged file field by field."""

from __future__ import annotations

import json
from pathlib import Path

from modelrepo.syncstatus import STATUS_FORMAT, ModelStatus, SyncStatus, read_status
from sync.status import StatusBook


def _book(path: Path) -> StatusBook:
    book = StatusBook(path, "s3://bucket/models")
    book.models = {
        "shapes": ModelStatus(
            served=[1, 2],
            labels={"stable": 1},
            pending_labels={"canary": 2},
            available_in_source=[1, 2, 3],
            failed_versions={"3": "checksum mismatch"},
            weights={"default": {"1": 90, "2": 10}},
        ),
        "gone": ModelStatus(missing_from_source=True, waiting_removal=[4]),
    }
    book.record_pass(0.25, [])
    book.bytes_downloaded_total = 1234
    return book


def test_what_sync_writes_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sync-status.json"
    book = _book(path)
    book.boot_done()
    back = read_status(path)
    assert back is not None
    assert SyncStatus.from_json(book.to_json()) == back
    assert back.models == book.models
    assert back.source == "s3://bucket/models"
    assert back.boot_completed_at is not None
    assert back.last_success_unix is not None
    body = json.loads(path.read_text())
    assert "path" not in body
    assert body["format"] == STATUS_FORMAT
    assert body["models"]["shapes"]["failed_versions"] == {"3": "checksum mismatch"}


def test_numbers_are_the_flat_top_level_fields(tmp_path: Path) -> None:
    numbers = _book(tmp_path / "s.json").numbers()
    assert numbers["format"] == 1.0
    assert numbers["passes_total"] == 1.0
    assert numbers["bytes_downloaded_total"] == 1234.0
    assert numbers["last_pass_seconds"] == 0.25
    assert numbers["versions_served"] == 2.0
    assert numbers["versions_in_source"] == 3.0
    assert numbers["versions_failed"] == 1.0
    assert numbers["labels_pending"] == 1.0
    assert numbers["versions_waiting_removal"] == 1.0
    assert numbers["models_missing_from_source"] == 1.0
    assert numbers["degraded_flag"] == 0.0
    assert "last_error" not in numbers
    assert "started_at" not in numbers
    assert "boot_completed_at" not in numbers


def test_a_damaged_file_reads_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "sync-status.json"
    assert read_status(path) is None
    path.write_text("[1, 2]")
    assert read_status(path) is None
    path.write_text("{not json")
    assert read_status(path) is None
    body = {
        "source": 7,
        "degraded": "a local copy",
        "passes_total": True,
        "last_pass_seconds": 1.5,
        "models": {
            "m": {"served": [1, "two"], "labels": {"stable": 1}, "problems": "one"},
            "n": "not an object",
        },
    }
    path.write_text(json.dumps(body))
    status = read_status(path)
    assert status is not None
    assert status.source == ""
    assert status.passes_total == 0
    assert status.degraded == "a local copy"
    assert status.last_pass_seconds == 1.5
    assert status.models["m"] == ModelStatus(labels={"stable": 1})
    assert status.models["n"] == ModelStatus()
    assert status.numbers()["degraded_flag"] == 1.0
