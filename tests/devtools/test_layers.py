"""The layer contract `make lint` enforces (.importlinter, lint-imports; docs/layers.md): every
top-level package is under it, and it fails on the edges it forbids. The forbidden-edge cases
run the project's own contract file over a tiny tree with the project's package names."""

from __future__ import annotations

import configparser
import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devtools.importcycles import ROOT, find_packages

CONTRACT = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@functools.cache
def _contract() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONTRACT)
    return parser


def _root_packages() -> list[str]:
    return _contract()["importlinter"]["root_packages"].split()


def _contract_count() -> int:
    return sum(section.startswith("importlinter:contract:") for section in _contract().sections())


def _forbidden_contract_modules() -> list[str]:
    """The modules a forbidden contract names (source or forbidden), e.g. serving.launcher."""
    parser = _contract()
    modules: list[str] = []
    for section in parser.sections():
        if parser[section].get("type") == "forbidden":
            modules += parser[section]["source_modules"].split()
            modules += parser[section]["forbidden_modules"].split()
    return modules


def _lint(root: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contract over empty packages plus `files`."""
    for package in _root_packages():
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for module in _forbidden_contract_modules():  # import-linter wants them to exist
        files = {module.replace(".", "/") + ".py": "", **files}
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    shutil.copy(CONTRACT, root / ".importlinter")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_top_level_package_is_under_the_contract() -> None:
    assert sorted(_root_packages()) == sorted({*find_packages(ROOT), "tests"})


def test_the_project_keeps_the_contract() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{_contract_count()} kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        # The two edges issue 19 found, as they were.
        (
            "sync/modelconfig.py",
            "from gateway.catalog import x\n",
            "sync is not allowed to import gateway",
        ),
        (
            "bench/sync_measure.py",
            "from tests.sync import helpers\n",
            "bench is not allowed to import tests",
        ),
        # A deferred import counts as much as one at the top.
        (
            "gateway/routes.py",
            "def f():\n    import serving.flags\n",
            "gateway is not allowed to import serving",
        ),
        (
            "modelrepo/rules.py",
            "import gateway.openapi\n",
            "modelrepo is not allowed to import gateway",
        ),
        (
            "envsettings/x.py",
            "import modelrepo.y\n",
            "envsettings is not allowed to import modelrepo",
        ),
        ("devtools/net.py", "from bench import stack\n", "devtools is not allowed to import bench"),
        ("export/cli.py", "import devtools.net\n", "export is not allowed to import devtools"),
        ("deploy/image.py", "import bench.stack\n", "deploy is not allowed to import bench"),
        (
            "serving/launcher.py",
            "def f():\n    import serving.local.server\n",
            "serving.launcher is not allowed to import serving.local",
        ),
    ],
)
def test_a_forbidden_edge_breaks_the_contract(
    tmp_path: Path, module: str, source: str, broken: str
) -> None:
    target = source.split()[1]
    result = _lint(tmp_path, {module: source, target.replace(".", "/") + ".py": ""})
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout


def test_edges_down_the_layers_keep_it(tmp_path: Path) -> None:
    files = {
        "gateway/catalog.py": "from modelrepo import modelconfig\nimport envsettings\n",
        "modelrepo/modelconfig.py": "",
        "sync/syncer.py": "from modelrepo.modelconfig import x\n",
        "devtools/fakeserver.py": "import modelrepo.modelconfig\nimport sync.syncer\n",
        "bench/sync_measure.py": "import devtools.fakeserver\nimport gateway.catalog\n",
        "deploy/image.py": "import devtools.fakeserver\n",
        "tests/test_x.py": "import bench.sync_measure\nimport deploy.image\n",
    }
    result = _lint(tmp_path, files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{_contract_count()} kept, 0 broken" in result.stdout
