"""The files that build the dyno agree with each other (the Docker image cannot be built here)."""

from __future__ import annotations

import re
import shlex

from tests.support import REPO_ROOT

SUPERVISORD_CONF = (REPO_ROOT / "supervisord.conf").read_text()
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
MAKEFILE = (REPO_ROOT / "Makefile").read_text()


def supervisord_env_names() -> set[str]:
    settings = "\n".join(line for line in SUPERVISORD_CONF.splitlines() if not line.startswith(";"))
    return set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", settings))


def dockerfile_env_names() -> set[str]:
    names: set[str] = set()
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", DOCKERFILE, re.M | re.S):
        for item in shlex.split(block.replace("\\\n", " ")):
            names.add(item.split("=", 1)[0])
    return names


def make_run_env_names() -> set[str]:
    recipe = MAKEFILE.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)=", recipe, re.M))


def test_the_image_sets_every_variable_supervisord_conf_needs() -> None:
    missing = supervisord_env_names() - dockerfile_env_names()
    assert not missing, f"Dockerfile lacks ENV {sorted(missing)} that supervisord.conf expands"


def test_make_run_sets_every_variable_supervisord_conf_needs() -> None:
    missing = supervisord_env_names() - make_run_env_names()
    assert not missing, f"`make run` does not set {sorted(missing)} for supervisord.conf"


def test_the_image_copies_every_package_the_dyno_runs() -> None:
    programs = re.findall(r"^command=\S+ -m (\w+)", SUPERVISORD_CONF, re.M)
    assert sorted(programs) == ["gateway", "serving", "sync"]
    for package in programs:
        assert f"COPY {package} {package}" in DOCKERFILE


def test_the_image_keeps_tensorflow_out_of_its_python() -> None:
    installs = re.findall(r"pip install[^\n]*-r (\S+)", DOCKERFILE)
    assert installs == ["requirements/gateway.txt"]
    text = (REPO_ROOT / "requirements" / "gateway.txt").read_text().lower()
    assert "tensorflow" not in re.sub(r"#.*", "", text)
