"""The import-cycle check (`make lint`) on tiny synthetic packages, and on the project itself."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devtools.importcycles import ROOT, build_graph, check, find_packages, main, module_files


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


CYCLIC = {
    "app/__init__.py": "",
    "app/types.py": "from dataclasses import dataclass\n",
    # The dispatcher defers its import, as export/checkpoints.py once did: still a cycle.
    "app/dispatch.py": """\
        from app.types import dataclass

        def load():
            from app import loader
            return loader
        """,
    "app/loader.py": "from .dispatch import load\n",
    "lib/__init__.py": "",
    "lib/a.py": "import lib.b\n",
    "lib/b.py": """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from lib.a import something
        """,
}


def test_finds_every_cycle_with_its_path(tmp_path: Path) -> None:
    root = _write(tmp_path, CYCLIC)
    cycles, count = check(root)
    assert count == 7
    assert cycles == [
        ["app.dispatch", "app.loader", "app.dispatch"],
        ["lib.a", "lib.b", "lib.a"],
    ]


def test_main_fails_and_names_the_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write(tmp_path, CYCLIC)
    assert main(["--root", str(root), "lib"]) == 1
    assert "import cycle: lib.a -> lib.b -> lib.a" in capsys.readouterr().err


def test_a_chain_is_no_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write(
        tmp_path,
        {
            # A package may import its own submodules; they may import each other one way.
            "pkg/__init__.py": "from pkg.top import run\n",
            "pkg/top.py": "from pkg import mid\nimport json\n",
            "pkg/mid.py": "from . import low\nfrom .low import VALUE\n",
            "pkg/low.py": "import pkg.sub.leaf\nVALUE = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/leaf.py": "import json\n",
        },
    )
    assert main(["--root", str(root)]) == 0
    assert "none among 6 modules (pkg)" in capsys.readouterr().out


def test_imports_resolve_to_the_deepest_module(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "X = 1\n",
            "pkg/a.py": "from pkg import X, b\nfrom pkg.sub.c import f\nfrom ..outside import y\n",
            "pkg/b.py": "from .sub import c\nfrom . import X\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..b import g\nimport os.path\n",
        },
    )
    graph = build_graph(module_files(root, ["pkg"]))
    assert graph["pkg.a"] == {"pkg", "pkg.b", "pkg.sub.c"}
    assert graph["pkg.b"] == {"pkg.sub.c", "pkg"}
    assert graph["pkg.sub.c"] == {"pkg.b"}


def test_the_project_has_no_import_cycle() -> None:
    packages = find_packages(ROOT)
    assert {"gateway", "serving", "sync", "export", "bench", "devtools", "dyno"} <= set(packages)
    assert "tests" not in packages
    assert check(ROOT, packages)[0] == []
