"""One way to read settings: one boolean dialect, errors that name the variable and what it
accepts, one line and exit status 78 instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from envsettings import EX_CONFIG, EnvSettings, SettingsError, env, exit_on_error, number
from gateway.settings import Settings as GatewaySettings
from serving.settings import Settings as ServingSettings
from sync.settings import Settings as SyncSettings
from tests.support import REPO_ROOT


@dataclass(frozen=True)
class Example(EnvSettings):
    flag: bool = env("X_FLAG", False)
    """A boolean."""
    wait: float = env("X_WAIT", 1.5, number(0))
    """A number."""
    names: tuple[str, ...] = env("X_NAMES", ())
    """A list."""
    base: Path = env("X_BASE", Path("b"))
    """A path."""
    below: Path = env("X_BELOW", Path("b/f"), derive=lambda read: read["base"] / "f")
    """Derived from `base` unless set."""
    region: str = env(("X_REGION", "X_FALLBACK"), "here")
    """Read from the first variable set."""


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "Yes", "on", "ON", " true "])
def test_true_everywhere(word: str) -> None:
    assert Example.from_env({"X_FLAG": word}).flag is True
    assert GatewaySettings.from_env({"DYNOSERVE_FETCH_ALLOW_PRIVATE": word}).fetch_allow_private
    assert SyncSettings.from_env({"DYNOSERVE_SYNC_PRUNE": word}).prune_missing
    assert ServingSettings.from_env({"DYNOSERVE_MODEL_SERVER_LOCAL": word}).use_local_server


@pytest.mark.parametrize("word", ["0", "false", "No", "OFF", ""])
def test_false_everywhere(word: str) -> None:
    assert Example.from_env({"X_FLAG": word}).flag is False
    assert not SyncSettings.from_env({"DYNOSERVE_SYNC_PRUNE": word}).prune_missing
    assert not ServingSettings.from_env({"DYNOSERVE_MODEL_SERVER_LOCAL": word}).use_local_server


def test_a_bad_value_names_the_variable_and_what_it_accepts() -> None:
    with pytest.raises(SettingsError) as info:
        Example.from_env({"X_FLAG": "maybe"})
    assert info.value.variable == "X_FLAG"
    assert (
        str(info.value) == "X_FLAG='maybe': expected true/false, 1/0, yes/no or on/off (any case)"
    )
    with pytest.raises(SettingsError, match=r"X_WAIT='-1': expected a number >= 0"):
        Example.from_env({"X_WAIT": "-1"})


@pytest.mark.parametrize(
    ("settings", "name", "value"),
    [
        (ServingSettings, "DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS", "soon"),
        (ServingSettings, "DYNOSERVE_MODEL_SERVER_THREADS", "-2"),
        (SyncSettings, "DYNOSERVE_SYNC_INTERVAL", "0"),
        (SyncSettings, "DYNOSERVE_SYNC_RETRIES", "two"),
        (SyncSettings, "DYNOSERVE_LABELS_FOR_UNAVAILABLE_MODELS", "maybe"),
        (GatewaySettings, "DYNOSERVE_MAX_BATCH", "many"),
    ],
)
def test_every_process_names_the_variable(
    settings: type[EnvSettings], name: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=name) as info:
        settings.from_env({name: value})
    assert info.value.variable == name


def test_empty_means_unset_fallbacks_and_derived_defaults() -> None:
    assert Example.from_env({"X_WAIT": "", "X_NAMES": "a, b,,"}) == Example(names=("a", "b"))
    assert Example.from_env({"X_BASE": "/m"}).below == Path("/m/f")
    assert Example.from_env({"X_BASE": "/m", "X_BELOW": "/o"}).below == Path("/o")
    assert Example.from_env({"X_REGION": "", "X_FALLBACK": "there"}).region == "there"
    assert Example.from_env({}) == Example()


def test_exit_on_error_prints_one_line_and_exits_78(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info, exit_on_error("prog"):
        Example.from_env({"X_WAIT": "soon"})
    assert info.value.code == EX_CONFIG == 78
    assert (
        capsys.readouterr().err
        == "prog: configuration error: X_WAIT='soon': expected a number >= 0\n"
    )


def test_the_launcher_ends_with_one_line_and_78_on_a_bad_wait() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving"],
        env={"DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS": "2m", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip().splitlines() == [
        "python -m serving: configuration error: "
        "DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS='2m': expected a number >= 0"
    ]
