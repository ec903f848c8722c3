"""`python -m export`: exit codes, messages, nothing written on failure, the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from export.cli import main
from export.tfimport import filter_cpp_log, min_log_level
from tests.export.sources import write_labels
from tests.support import REPO_ROOT, python_env


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _empty(directory: Path) -> bool:
    return not directory.exists() or not any(directory.rglob("*"))


def test_help_is_fast_and_tensorflow_free() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from export.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit as e: code = e.code\n"
        "print(code, 'tensorflow' in sys.modules, 'checkpoint kinds' in out.getvalue())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=python_env(),
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["0", "False", "True"]


def test_exports_and_summarises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keras_file: Any, labels4: Path
) -> None:
    code, out, err = _run(
        capsys, keras_file[0], "--name", "flowers", "--export-dir", tmp_path, "--labels", labels4
    )
    assert code == 0, err
    assert f"wrote flowers version 1 to {tmp_path / 'flowers' / '1'}" in out
    assert "signatures: serving_default, predict_pixels" in out
    assert "input: 16x16 RGB, normalization minus_one_to_one" in out
    assert "classes (4): label-0, label-1, label-2, label-3" in out
    assert "size on disk:" in out
    assert "loading keras checkpoint" in err
    assert "reloading the export" in err


def test_export_dir_from_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keras_file: Any,
) -> None:
    monkeypatch.setenv("DYNOSERVE_EXPORT_DIR", str(tmp_path / "repo"))
    code, _out, err = _run(
        capsys,
        keras_file[0],
        "--name",
        "m",
        "--version",
        "3",
        "--normalization",
        "mean_std",
        "--mean",
        "120,115,100",
        "--std",
        "60,60,60",
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "repo/m/3/assets.extra/dynoserve.json").read_text())
    assert meta["normalization"]["kind"] == "mean_std"
    assert meta["normalization"]["mean"] == [120.0, 115.0, 100.0]
    assert meta["labels"] == ["class_0", "class_1", "class_2", "class_3"]
    assert "no --labels given" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--version", "abc"], "version must be a positive integer"),
        (["--version", "0"], "version must be a positive integer"),
        (["--version", "1.5"], "version must be a positive integer"),
        (["--input-size", "big"], "--input-size must be H or HxW"),
        (["--mean", "1,2"], "--mean must be three"),
        (["--name", "../escape"], "model name"),
        (["--labels", "/nonexistent/labels.txt"], "labels file"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keras_file: Any,
    extra: list[str],
    message: str,
) -> None:
    code, _out, err = _run(capsys, keras_file[0], "--name", "m", "--export-dir", tmp_path, *extra)
    assert code == 2
    assert message in err
    assert _empty(tmp_path)


def test_argparse_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x.keras"), "--export-dir", str(tmp_path)])  # no --name
    assert exit_info.value.code == 2
    assert "--name" in capsys.readouterr().err


def test_failures_exit_1_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keras_file: Any, src: Path
) -> None:
    base = ["--name", "m", "--export-dir", tmp_path / "repo"]
    code, _out, err = _run(capsys, tmp_path / "missing.keras", *base)
    assert (code, "does not exist" in err) == (1, True)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    code, _out, err = _run(capsys, junk, *base)
    assert (code, "not a checkpoint kind" in err) == (1, True)
    code, _out, err = _run(capsys, keras_file[0], *base, "--labels", write_labels(src, 5))
    assert (code, "has 5 labels but the model has 4 outputs" in err) == (1, True)
    code, _out, err = _run(capsys, keras_file[0], *base, "--input-size", "20")
    assert (code, "differs from the model's fixed input 16x16" in err) == (2, True)
    assert _empty(tmp_path / "repo")


def test_existing_version_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keras_file: Any
) -> None:
    base = [keras_file[0], "--name", "m", "--export-dir", tmp_path, "--version", "1"]
    assert _run(capsys, *base)[0] == 0
    created = (tmp_path / "m/1/assets.extra/dynoserve.json").read_text()
    code, _out, err = _run(capsys, *base)
    assert code == 1
    assert "already exists; pass --force" in err
    assert (tmp_path / "m/1/assets.extra/dynoserve.json").read_text() == created
    assert _run(capsys, *base, "--force")[0] == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_kind_override_must_fit_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keras_file: Any
) -> None:
    argv = [keras_file[0], "--name", "m", "--export-dir", tmp_path, "--kind", "h5"]
    code, _out, err = _run(capsys, *argv)
    assert code == 2
    assert "looks like a keras checkpoint, not h5" in err
    assert _empty(tmp_path)


def _python_m_export(
    *argv: Any, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        env=python_env(env),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_module_entry_point(tmp_path: Path, h5_file: Any, labels4: Path, onednn: str) -> None:
    """The command `make export` runs, as a real process: exit codes and summary, and none of
    TensorFlow's C++ start-up lines under TF_CPP_MIN_LOG_LEVEL=2 (the oneDNN notice)."""
    base = [h5_file[0], "--name", "legacy", "--export-dir", tmp_path]
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": onednn}
    result = _python_m_export(*base, "--labels", labels4, "--version", "4", env=quiet)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote legacy version 4" in result.stdout
    assert "oneDNN" not in result.stderr
    assert "absl::InitializeLog" not in result.stderr
    assert result.stderr.splitlines()[1].endswith("loading h5 checkpoint " + str(h5_file[0]))
    assert (tmp_path / "legacy/4/saved_model.pb").is_file()
    again = _python_m_export(*base, "--version", "x")
    assert again.returncode == 2
    assert "version must be a positive integer" in again.stderr


def test_cpp_log_lines_below_the_level_are_dropped() -> None:
    banner = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796121141.804254    7069 port.cc:153] oneDNN custom operations are on.\n"
    )
    warning = "W0000 00:00:1796121141.804254    7069 cpu_feature_guard.cc:1] slow CPU\n"
    ours = "[   0.0s] loading TensorFlow\n"
    assert filter_cpp_log(banner + warning + ours, 2) == ours
    assert filter_cpp_log(banner + warning + ours, 1) == warning + ours
    assert filter_cpp_log(banner + ours, 0) == banner + ours
    assert min_log_level({"TF_CPP_MIN_LOG_LEVEL": "2"}) == 2
    assert min_log_level({"TF_CPP_MIN_LOG_LEVEL": "x"}) == 0


def test_bad_warmup_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keras_file: Any
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    argv = [keras_file[0], "--name", "m", "--export-dir", tmp_path / "repo", "--warmup-image", text]
    code, _out, err = _run(capsys, *argv)
    assert code == 1
    assert "warmup image cannot be classified" in err
    assert _empty(tmp_path / "repo")
