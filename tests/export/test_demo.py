"""The demo model's data, training flow and sample images (small configurations: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.demo import SAMPLES_DIR, main
from export.demo_config import COLOURS, DemoConfig, Plan
from export.errors import TrainingFailed
from export.shapes import class_names, generate
from export.training import SAMPLES, build_demo, write_samples

QUICK = DemoConfig(
    plans=(
        Plan(version=1, shapes=("circle", "square"), per_class=12, max_epochs=1, seed=1),
        Plan(
            version=2, shapes=("circle", "square", "triangle"), per_class=12, max_epochs=1, seed=2
        ),
    ),
    required_accuracy=0.0,
    check_samples=False,
    validation_per_class=4,
    test_per_class=4,
)


def test_generated_images_are_seeded_and_balanced() -> None:
    classes = class_names(COLOURS, ("circle", "square"))
    first, again = generate(classes, 5, seed=3), generate(classes, 5, seed=3)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.images.shape == (30, 64, 64, 3)
    assert first.images.dtype == np.uint8
    assert np.bincount(first.labels).tolist() == [5] * 6
    assert not np.array_equal(generate(classes, 5, seed=4).images, first.images)


def test_committed_samples_are_what_the_demo_writes(tmp_path: Path) -> None:
    write_samples(tmp_path)
    for filename, _label, _seed in SAMPLES:
        assert (tmp_path / filename).read_bytes() == (SAMPLES_DIR / filename).read_bytes(), filename
        assert (tmp_path / filename).stat().st_size < 16_000


def test_two_versions_with_their_own_classes(tmp_path: Path) -> None:
    build_demo(tmp_path / "shapes", tmp_path / "samples", QUICK)
    for version, count in ((1, 6), (2, 9)):
        meta = json.loads((tmp_path / f"shapes/{version}/assets.extra/dynoserve.json").read_text())
        assert len(meta["labels"]) == count
        assert meta["input_size"] == [32, 32]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == sorted(
        f for f, _label, _seed in SAMPLES
    )


def test_poor_accuracy_exports_nothing(tmp_path: Path) -> None:
    config = DemoConfig(plans=QUICK.plans[:1], required_accuracy=1.01, check_samples=False)
    with pytest.raises(TrainingFailed, match="held-out accuracy"):
        build_demo(tmp_path / "shapes", tmp_path / "samples", config)
    assert not (tmp_path / "shapes" / "1").exists()


def test_existing_versions_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("1", "2"):
        (tmp_path / "shapes" / version).mkdir(parents=True)
    assert main(["--export-dir", str(tmp_path)]) == 0
    assert "has versions 1 and 2 already" in capsys.readouterr().out


def test_demo_manifest_serves_both_versions_with_labels_as_sync_reads_it(tmp_path: Path) -> None:
    from export.demo import write_manifest
    from modelrepo.manifest import parse_manifest

    write_manifest(tmp_path)
    manifest = parse_manifest((tmp_path / "dynoserve-model.json").read_bytes(), "shapes")
    assert manifest.policy.kind == "all"
    assert dict(manifest.labels) == {"stable": 1, "canary": 2}
    (tmp_path / "dynoserve-model.json").write_text('{"version_labels": {"stable": 2}}')
    write_manifest(tmp_path)  # an operator's edit is kept
    assert json.loads((tmp_path / "dynoserve-model.json").read_text()) == {
        "version_labels": {"stable": 2}
    }
