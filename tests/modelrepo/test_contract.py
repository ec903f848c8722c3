"""The model repository's rules, as every process applies them (modelrepo)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import modelrepo
from modelrepo import is_label, is_model_name, parse_version, read_version


@pytest.mark.parametrize("name", ["shapes", "m", "Model_2.v-1", "a" * 128, "0"])
def test_model_names(name: str) -> None:
    assert is_model_name(name)


@pytest.mark.parametrize("name", ["", "-m", ".m", "_m", "a/b", "a b", "a" * 129, "m\n", "é", 3])
def test_not_model_names(name: object) -> None:
    assert not is_model_name(name)


@pytest.mark.parametrize("name", ["stable", "canary", "_x", "v2.1-rc", "a" * 64])
def test_labels(name: str) -> None:
    assert is_label(name)


# A label never reads as a version number: sync, the manifest tool and the gateway share this rule.
@pytest.mark.parametrize("name", ["", "2", "2x", "-a", ".a", "a b", "a" * 65, "stable\n", 1])
def test_not_labels(name: object) -> None:
    assert not is_label(name)


@pytest.mark.parametrize(
    ("text", "version"),
    [("1", 1), ("01", 1), ("007", 7), ("+2", 2), (" 3 ", 3), (str(2**63 - 1), 2**63 - 1)],
)
def test_tf_serving_reads_these_names_as_versions(text: str, version: int) -> None:
    assert read_version(text) == version


@pytest.mark.parametrize("text", ["0", "00", "-1", "", "v1", "1.0", "1e3", "١", str(2**63)])
def test_tf_serving_skips_these_or_they_are_no_positive_version(text: str) -> None:
    assert read_version(text) is None


def test_the_project_writes_and_copies_only_canonical_version_folders() -> None:
    assert parse_version("12") == 12
    assert modelrepo.version_dir(12) == "12"
    for name in ("01", "+1", " 1", "0", "x"):
        assert parse_version(name) is None, name


def test_files_under_the_base_path() -> None:
    base = Path("/models")
    assert modelrepo.config_file(base) == Path("/models/models.config")
    assert modelrepo.status_file(base) == Path("/models/sync-status.json")


def test_the_gateway_can_import_it_without_tensorflow_or_boto3() -> None:
    source = Path(modelrepo.__file__).read_text()
    for heavy in ("tensorflow", "boto3", "botocore", "numpy"):
        assert f"import {heavy}" not in source


def test_every_module_imports_the_standard_library_and_protobuf_only() -> None:
    allowed = {*sys.stdlib_module_names, "google", "modelrepo"}
    for path in Path(modelrepo.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("google"):
                    assert name.startswith("google.protobuf"), f"{path.name} imports {name}"
