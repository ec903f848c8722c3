"""Sync against a real S3 API (moto server on loopback): boot, increments, labels, failures."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from devtools.fakeserver import FakeRestStatusServer
from sync.cli import build_source
from sync.errors import BucketNotFound
from sync.marker import MARKER_NAME
from sync.settings import Settings
from sync.syncer import Syncer
from tests.support import free_port, wait_for
from tests.sync.helpers import publish, put_manifest, served, version_dirs


def make_syncer(env: Mapping[str, str]) -> Syncer:
    settings = Settings.from_env(env)
    return Syncer(settings, build_source(settings))


def status(env: Mapping[str, str]) -> dict[str, Any]:
    path = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "sync-status.json"
    return json.loads(path.read_text())


def same_tree(a: Path, b: Path) -> bool:
    files_a = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    files_b = {
        p.relative_to(b): p.read_bytes()
        for p in b.rglob("*")
        if p.is_file() and p.name != MARKER_NAME
    }
    return files_a == files_b


def test_fresh_sync_installs_versions_and_writes_config(env: dict) -> None:
    exported = publish(env, "cats", 1)
    publish(env, "dogs", 3)
    make_syncer(env).boot()
    base = Path(env["DYNOSERVE_MODEL_BASE_PATH"])
    assert same_tree(exported, base / "cats" / "1")
    assert (base / "dogs" / "3" / "variables").is_dir()
    assert served(env) == {"cats": ((1,), {}), "dogs": ((3,), {})}
    assert not any((base / ".staging").iterdir())
    report = status(env)
    assert report["last_success_at"]
    assert report["versions_served"] == 2
    assert report["models"]["cats"]["served"] == [1]


def test_second_pass_fetches_nothing_and_new_version_reuses_files(
    env: dict, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1, size=200_000)
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)  # version 1 stays on disk while served
    first = syncer.status.bytes_downloaded_total
    syncer.run_pass()
    assert syncer.status.bytes_downloaded_total == first
    assert syncer.status.versions_installed_total == 1
    publish(env, "cats", 2, size=1000)
    syncer.run_pass()
    # labels.txt is identical in both versions: linked from version 1, not downloaded again.
    labels_v1 = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "cats" / "1" / "assets" / "labels.txt"
    labels_v2 = labels_v1.parents[2] / "2" / "assets" / "labels.txt"
    assert labels_v2.stat().st_ino == labels_v1.stat().st_ino
    # Version 2's own small files and export record, nothing of version 1's 200 kB.
    assert syncer.status.bytes_downloaded_total - first < 3000


def test_damaged_local_file_is_repaired(env: dict) -> None:
    publish(env, "cats", 1, size=50_000)
    syncer = make_syncer(env)
    syncer.boot()
    data = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "cats/1/variables/variables.data-00000-of-00001"
    data.write_bytes(b"truncated")
    syncer.run_pass()
    assert data.stat().st_size == 50_000
    assert same_tree(Path(env["DYNOSERVE_EXPORT_DIR"]) / "cats" / "1", data.parents[1])


def test_new_version_is_served_and_old_one_deleted_once_unloaded(
    env: dict, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    publish(env, "cats", 2)
    syncer.run_pass()
    assert served(env) == {"cats": ((2,), {})}
    # The server still holds version 1 until it rereads models.config: the files must stay.
    assert version_dirs(env, "cats") == [1, 2]
    assert status(env)["models"]["cats"]["waiting_removal"] == [1]
    model_server.states["cats"] = {1: "END", 2: "AVAILABLE"}
    syncer.run_pass()
    assert version_dirs(env, "cats") == [2]


def test_version_without_completion_marker_is_ignored(env: dict, s3: Any) -> None:
    publish(env, "cats", 1)
    # Half a publish: files of version 2 are there, the marker is not.
    for key in ("saved_model.pb", "variables/variables.index"):
        s3.put_object(Bucket=env["BUCKETEER_BUCKET_NAME"], Key=f"models/cats/2/{key}", Body=b"x")
    make_syncer(env).boot()
    assert served(env) == {"cats": ((1,), {})}
    assert version_dirs(env, "cats") == [1]
    assert status(env)["models"]["cats"]["incomplete_in_source"] == [2]


def test_checksum_mismatch_skips_version_and_keeps_previous(
    env: dict, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    publish(env, "cats", 1)
    publish(env, "cats", 2, size=5000)
    key = "models/cats/2/variables/variables.data-00000-of-00001"
    s3.put_object(Bucket=env["BUCKETEER_BUCKET_NAME"], Key=key, Body=b"\0" * 5000)
    syncer = make_syncer(env)
    syncer.boot()
    assert served(env) == {"cats": ((1,), {})}
    assert version_dirs(env, "cats") == [1]
    assert "checksum mismatch" in caplog.text
    assert "attempt 3 of 3" in caplog.text
    report = status(env)
    assert "does not match" in report["last_error"]
    assert report["consecutive_failures"] == 1
    assert not any((Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / ".staging").iterdir())


def test_corrupt_version_stays_reported_until_it_leaves_the_bucket(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    """Issue 10 (a): a garbage saved_model.pb behind a valid marker was logged once and gone
    from the status file on the next pass."""
    from gateway.metrics import SyncStatusCollector

    bucket = env["BUCKETEER_BUCKET_NAME"]
    publish(env, "cats", 1)
    publish(env, "cats", 2)
    key = "models/cats/2/saved_model.pb"
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"\xff" * size)  # same size, another hash
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    for _ in range(3):  # the failed version is not fetched again, and still reported
        syncer.run_pass()
        report = status(env)
        assert served(env) == {"cats": ((1,), {})}
        failed = report["models"]["cats"]["failed_versions"]
        assert list(failed) == ["2"], report
        assert "saved_model.pb" in failed["2"]
        assert report["versions_failed"] == 1
        assert any("cats/2" in p for p in report["models"]["cats"]["problems"])
    collected = {m.name: m for m in SyncStatusCollector(Path(syncer.status.path)).collect()}
    assert collected["dynoserve_sync_versions_failed"].samples[0].value == 1
    series = collected["dynoserve_sync_version_failed"].samples
    assert [(s.labels, s.value) for s in series] == [({"model": "cats", "version": "2"}, 1)]
    s3.delete_object(Bucket=bucket, Key=f"models/cats/2/{MARKER_NAME}")  # the fix: withdrawn
    syncer.run_pass()
    assert status(env)["models"]["cats"]["failed_versions"] == {}
    assert status(env)["versions_failed"] == 0


def test_empty_listing_does_not_wipe_the_repository(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    listed = s3.list_objects_v2(Bucket=env["BUCKETEER_BUCKET_NAME"])["Contents"]
    for item in listed:
        s3.delete_object(Bucket=env["BUCKETEER_BUCKET_NAME"], Key=item["Key"])
    model_server.states.clear()  # even a server that holds nothing must not trigger deletion
    syncer.run_pass()
    assert served(env) == {"cats": ((1,), {})}
    assert version_dirs(env, "cats") == [1]


def test_failing_listing_keeps_everything(env: dict, s3: Any) -> None:
    publish(env, "cats", 1)
    syncer = make_syncer(env)
    syncer.boot()
    config = (Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "models.config").read_text()
    bucket = env["BUCKETEER_BUCKET_NAME"]
    for item in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(BucketNotFound, match="BUCKETEER_BUCKET_NAME"):
        syncer.run_pass()
    assert (Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "models.config").read_text() == config
    assert version_dirs(env, "cats") == [1]
    assert status(env)["consecutive_failures"] == 1


def test_policy_and_labels_follow_the_manifest(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    publish(env, "cats", 2)
    manifest = {
        "model_version_policy": {"specific": {"versions": [1, 2]}},
        "version_labels": {"stable": 1, "canary": 2},
    }
    put_manifest(s3, env, "cats", manifest)
    syncer = make_syncer(env)
    syncer.boot()
    # Nothing is loaded yet: stock TF Serving would refuse the labels, so they wait.
    assert served(env) == {"cats": ((1, 2), {})}
    assert status(env)["models"]["cats"]["pending_labels"] == {"stable": 1, "canary": 2}
    model_server.serve_config(env)
    syncer.run_pass()
    assert served(env) == {"cats": ((1, 2), {"stable": 1, "canary": 2})}
    put_manifest(s3, env, "cats", {**manifest, "version_labels": {"stable": 2, "canary": 2}})
    syncer.run_pass()
    assert served(env) == {"cats": ((1, 2), {"stable": 2, "canary": 2})}


def test_label_moves_only_once_the_new_version_is_loaded(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    put_manifest(s3, env, "cats", {"model_version_policy": {"latest": {"num_versions": 2}},
                                   "version_labels": {"stable": 1}})  # fmt: skip
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    syncer.run_pass()
    publish(env, "cats", 2)
    put_manifest(s3, env, "cats", {"model_version_policy": {"latest": {"num_versions": 2}},
                                   "version_labels": {"stable": 2}})  # fmt: skip
    syncer.run_pass()
    assert served(env) == {"cats": ((1, 2), {"stable": 1})}
    assert status(env)["models"]["cats"]["pending_labels"] == {"stable": 2}
    model_server.states["cats"][2] = "AVAILABLE"
    syncer.run_pass()
    assert served(env) == {"cats": ((1, 2), {"stable": 2})}
    assert status(env)["models"]["cats"]["pending_labels"] == {}


def test_bad_manifest_keeps_the_model_as_it_was(env: dict, s3: Any) -> None:
    publish(env, "cats", 1)
    syncer = make_syncer(env)
    syncer.boot()
    publish(env, "cats", 2)
    put_manifest(s3, env, "cats", {"model_version_policy": {"newest": {}}})
    syncer.run_pass()
    assert served(env) == {"cats": ((1,), {})}
    assert "unknown model_version_policy" in status(env)["last_error"]


def test_watch_applies_a_pending_label_seconds_after_the_version_loads(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    put_manifest(s3, env, "cats", {"version_labels": {"stable": 1}})
    syncer = make_syncer({**env, "DYNOSERVE_SYNC_INTERVAL": "300"})
    syncer.boot()
    assert served(env) == {"cats": ((1,), {})}
    stop = threading.Event()
    watcher = threading.Thread(target=syncer.watch, args=(stop,))
    watcher.start()
    try:
        model_server.serve_config(env)
        wait_for(lambda: served(env) == {"cats": ((1,), {"stable": 1})}, timeout=10)
    finally:
        stop.set()
        watcher.join(10)
    assert not watcher.is_alive()


def test_restart_without_bucket_or_model_server_drops_labels_from_the_old_config(
    env: dict, s3: Any, model_server: FakeRestStatusServer, caplog: pytest.LogCaptureFixture
) -> None:
    publish(env, "cats", 1)
    put_manifest(s3, env, "cats", {"version_labels": {"stable": 1}})
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    syncer.run_pass()
    assert served(env) == {"cats": ((1,), {"stable": 1})}
    # The dyno's processes restart: the bucket is unreachable, the model server not up yet.
    dead = f"http://127.0.0.1:{free_port()}"
    make_syncer(
        {**env, "DYNOSERVE_S3_ENDPOINT_URL": dead, "DYNOSERVE_MODEL_SERVER_REST_URL": dead}
    ).boot()
    assert "SERVING THE LOCAL COPY" in caplog.text
    # Stock TF Serving would refuse to start with a label on a version it has not loaded.
    assert served(env) == {"cats": ((1,), {})}
    assert status(env)["degraded_flag"] == 1


def test_version_removed_from_bucket_falls_back_and_is_deleted_after_unload(
    env: dict, s3: Any, model_server: FakeRestStatusServer
) -> None:
    publish(env, "cats", 1)
    publish(env, "cats", 2)
    syncer = make_syncer(env)
    syncer.boot()
    assert version_dirs(env, "cats") == [2]  # latest 1: version 1 is not even fetched
    model_server.serve_config(env)
    bucket = env["BUCKETEER_BUCKET_NAME"]
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="models/cats/2/")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    syncer.run_pass()
    assert served(env) == {"cats": ((1,), {})}
    assert version_dirs(env, "cats") == [1, 2]
    model_server.serve_config(env)  # the server rereads models.config and unloads version 2
    syncer.run_pass()
    assert version_dirs(env, "cats") == [1]
    assert status(env)["versions_removed_total"] == 1


def delete_model(s3: Any, env: Mapping[str, str], model: str) -> None:
    bucket = env["BUCKETEER_BUCKET_NAME"]
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"models/{model}/")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def scrape(env: Mapping[str, str]) -> str:
    """/metrics as the gateway renders sync's status file."""
    from prometheus_client import generate_latest

    from gateway.metrics import Metrics

    status_file = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "sync-status.json"
    return generate_latest(Metrics(status_file).registry).decode()


def test_model_gone_from_the_source_is_kept_and_reported_every_pass(
    env: dict, s3: Any, model_server: FakeRestStatusServer, caplog: pytest.LogCaptureFixture
) -> None:
    publish(env, "cats", 1)
    publish(env, "dogs", 1)
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    delete_model(s3, env, "cats")
    for _ in range(2):
        caplog.clear()
        syncer.run_pass()
        assert "cats is gone from s3://" in caplog.text
        assert "make prune" in caplog.text
    assert served(env) == {"cats": ((1,), {}), "dogs": ((1,), {})}
    assert version_dirs(env, "cats") == [1]
    report = status(env)
    assert report["models"]["cats"]["missing_from_source"] is True
    assert report["models"]["dogs"]["missing_from_source"] is False
    assert report["models_missing_from_source"] == 1
    metrics = scrape(env)
    assert "# TYPE dynoserve_sync_models_missing_from_source gauge" in metrics
    assert "dynoserve_sync_models_missing_from_source 1.0" in metrics


def test_sync_counters_are_prometheus_counters(env: dict) -> None:
    publish(env, "cats", 1)
    syncer = make_syncer(env)
    syncer.boot()
    syncer.run_pass()
    metrics = scrape(env)
    for counter in ("passes", "failures", "versions_installed", "bytes_downloaded"):
        assert re.search(rf"^# TYPE dynoserve_sync_{counter}(_total)? counter$", metrics, re.M)
    assert "dynoserve_sync_passes_total 2.0" in metrics
    assert "dynoserve_sync_versions_installed_total 1.0" in metrics
    assert "# TYPE dynoserve_sync_versions_served gauge" in metrics
    assert "dynoserve_sync_versions_served 1.0" in metrics


def test_prune_setting_drops_a_model_gone_from_the_source_once_unloaded(
    env: dict, s3: Any, model_server: FakeRestStatusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sync")
    env = {**env, "DYNOSERVE_SYNC_PRUNE": "true"}
    publish(env, "cats", 1)
    publish(env, "dogs", 1)
    syncer = make_syncer(env)
    syncer.boot()
    model_server.serve_config(env)
    delete_model(s3, env, "cats")
    syncer.run_pass()
    assert served(env) == {"dogs": ((1,), {})}
    assert "pruned cats" in caplog.text
    assert version_dirs(env, "cats") == [1]  # the server still holds it
    model_server.serve_config(env)  # it rereads models.config and unloads cats
    syncer.run_pass()
    assert version_dirs(env, "cats") == []
    # A source that lists nothing at all is not trusted to mean "serve nothing".
    delete_model(s3, env, "dogs")
    syncer.run_pass()
    assert served(env) == {"dogs": ((1,), {})}
    assert "not pruning dogs" in caplog.text
