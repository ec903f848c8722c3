"""The files that build the dyno agree with each other and with what the tests run (the Docker
image cannot be built here: no Docker engine). Also run by `make heroku-check`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from devtools.dynostack import DYNO_MODULE
from dyno.entrypoint import FIFO_NAME, PROVIDES
from tests.support import REPO_ROOT

SUPERVISORD_CONF = (REPO_ROOT / "supervisord.conf").read_text()
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
MAKEFILE = (REPO_ROOT / "Makefile").read_text()
README = (REPO_ROOT / "README.md").read_text()
APP_JSON = json.loads((REPO_ROOT / "app.json").read_text())
HEROKU_YML = (REPO_ROOT / "heroku.yml").read_text()
APP_DIR = "/app"


def supervisord_env_names() -> set[str]:
    settings = "\n".join(line for line in SUPERVISORD_CONF.splitlines() if not line.startswith(";"))
    return set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", settings))


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", DOCKERFILE, re.M | re.S):
        for item in shlex.split(block.replace("\\\n", " ")):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def final_stage() -> str:
    """The Dockerfile's last stage: the image itself (the stages before it make the model
    server's files, stock or local)."""
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[-1]


def dockerfile_args() -> dict[str, str]:
    """The global ARG defaults: what Heroku builds with."""
    head = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.M))


def copy_sources(dockerfile: str = DOCKERFILE) -> list[str]:
    """Sources of the COPY instructions that take files from the repository, as written
    (paths or globs)."""
    sources: list[str] = []
    for line in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.M):
        sources += line.split()
    return sources


def copied_name(source: str) -> str:
    """What a COPY source ships: the project package it lies in, else the path itself."""
    top = source.split("/", 1)[0]
    return top if (REPO_ROOT / top / "__init__.py").exists() else source


def dockerfile_copies(dockerfile: str = DOCKERFILE) -> list[str]:
    """The packages and files the COPY instructions take from the repository."""
    return sorted({copied_name(source) for source in copy_sources(dockerfile)})


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert match, "the Dockerfile has no exec-form CMD"
    return list(json.loads(match.group(1)))


def make_run_recipe() -> str:
    return MAKEFILE.split("\nrun:", 1)[1].split("\n\n", 1)[0]


def supervised_modules() -> list[str]:
    return re.findall(r"^command=\S+ -m (\w+)", SUPERVISORD_CONF, re.M)


def project_imports(package: Path) -> set[str]:
    """Top-level project packages the modules of `package` import."""
    projects = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists()}
    found: set[str] = set()
    for source in package.rglob("*.py"):
        text = source.read_text()
        found |= set(re.findall(r"^\s*(?:from|import) (\w+)", text, re.M)) & projects
    return found


def test_the_image_sets_every_variable_supervisord_conf_needs() -> None:
    missing = supervisord_env_names() - set(dockerfile_env()) - set(PROVIDES)
    assert not missing, f"Dockerfile lacks ENV {sorted(missing)} that supervisord.conf expands"


def test_make_run_sets_every_variable_supervisord_conf_needs() -> None:
    set_by_make = set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)=", make_run_recipe(), re.M))
    missing = supervisord_env_names() - set_by_make - set(PROVIDES)
    assert not missing, f"`make run` does not set {sorted(missing)} for supervisord.conf"


def test_every_variable_the_image_sets_is_read() -> None:
    readers = SUPERVISORD_CONF + "".join(
        p.read_text()
        for pkg in ("gateway", "serving", "sync", "dyno", "modelrepo", "envsettings")
        for p in (REPO_ROOT / pkg).rglob("*.py")
    )
    for name in dockerfile_env():
        if name.startswith("PYTHON"):
            continue  # read by the interpreter itself
        assert f"ENV_{name})s" in readers or f'"{name}"' in readers, f"nobody reads ENV {name}"


def test_every_path_the_image_copies_exists_and_is_used() -> None:
    for source in copy_sources(final_stage()):
        assert list(REPO_ROOT.glob(source)), f"COPY {source}: no such path"
    copies = dockerfile_copies(final_stage())
    pip_requirements = set(re.findall(r"pip install[^\n]*-r (\S+)", final_stage()))
    cmd_module = dockerfile_cmd()[dockerfile_cmd().index("-m") + 1]
    started = set(supervised_modules()) | {cmd_module}
    libraries = set().union(*(project_imports(REPO_ROOT / name) for name in started))
    used = pip_requirements | started | libraries | {"supervisord.conf"}
    assert set(copies) == used, (
        f"copied but unused: {set(copies) - used}, used but not copied: {used - set(copies)}"
    )


def test_the_image_copies_the_launcher_and_the_local_server_only_in_its_own_stage() -> None:
    """serving/ ships; serving/local/ (the stand-in for stock TF Serving) comes only from the
    local model server stage, so an image with the stock binary does not carry it."""
    final = {path for source in copy_sources(final_stage()) for path in REPO_ROOT.glob(source)}
    launcher = set((REPO_ROOT / "serving").glob("*.py"))
    assert launcher <= final
    local = REPO_ROOT / "serving" / "local"
    assert not [path for path in final if local in (path, *path.parents)]
    local_stage = DOCKERFILE.split("AS model-server-local", 1)[1].split("\nFROM ", 1)[0]
    assert "serving/local" in copy_sources(local_stage)


def test_the_copied_packages_import_only_copied_packages() -> None:
    copied = set(dockerfile_copies())
    for package in copied & {p.name for p in REPO_ROOT.iterdir() if p.is_dir()}:
        missing = project_imports(REPO_ROOT / package) - copied
        assert not missing, f"{package}/ imports {sorted(missing)}, which the image lacks"


def test_the_entrypoint_reads_the_copied_supervisord_conf() -> None:
    from dyno.entrypoint import APP_DIR as ENTRYPOINT_APP_DIR

    assert re.search(rf"^WORKDIR {APP_DIR}$", DOCKERFILE, re.M)
    assert ENTRYPOINT_APP_DIR == REPO_ROOT  # /app in the image: COPY dyno dyno under WORKDIR
    assert "COPY supervisord.conf supervisord.conf" in DOCKERFILE
    assert "stdout_logfile=%(ENV_DYNOSERVE_LOG_FIFO)s" in SUPERVISORD_CONF
    settings = [line for line in SUPERVISORD_CONF.splitlines() if not line.startswith(";")]
    assert not [line for line in settings if "/dev/stdout" in line], "EACCES as non-root"
    assert FIFO_NAME == "stdout.fifo"


def test_the_image_cmd_is_what_the_tests_and_make_run_start() -> None:
    env = dockerfile_env()
    assert dockerfile_cmd() == [env["DYNOSERVE_RUNTIME_PYTHON"], "-m", DYNO_MODULE]
    assert f"$(GW_PY) -m {DYNO_MODULE}" in make_run_recipe()
    stack_test = (REPO_ROOT / "tests" / "e2e" / "test_stack.py").read_text()
    assert f'str(GATEWAY_PYTHON), "-m", "{DYNO_MODULE}"' in stack_test


def test_the_launcher_finds_the_stock_binary_the_image_copies() -> None:
    destination = re.search(r"^COPY --from=tfserving \S+ (\S+)$", DOCKERFILE, re.M)
    assert destination
    assert dockerfile_env()["DYNOSERVE_MODEL_SERVER_BIN"] == destination.group(1)


def test_the_image_makes_the_writable_paths_and_runs_as_a_numeric_user() -> None:
    env = dockerfile_env()
    for name in ("DYNOSERVE_MODEL_BASE_PATH", "DYNOSERVE_RUN_DIR"):
        assert re.search(rf"mkdir -p [^\n]*{env[name]}", DOCKERFILE), name
        assert re.search(rf"chmod 1777 [^\n]*{env[name]}", DOCKERFILE), name
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users, "no USER: the image would run as root"
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"USER {users[-1]}: numeric, not root"


def test_the_image_keeps_tensorflow_out_of_its_python() -> None:
    installs = re.findall(r"pip install[^\n]*-r (\S+)", final_stage())
    assert installs == ["requirements/gateway.txt"]
    assert "/app/.venv" not in final_stage()  # only the local model server stage has one
    text = (REPO_ROOT / "requirements" / "gateway.txt").read_text().lower()
    assert "tensorflow" not in re.sub(r"#.*", "", text)


def test_app_json_describes_a_container_app_with_bucketeer() -> None:
    assert APP_JSON["stack"] == "container"
    assert [a["plan"].split(":")[0] for a in APP_JSON["addons"]] == ["bucketeer"]
    for name, spec in APP_JSON["env"].items():
        assert f"| `{name}` |" in README, f"app.json's {name} is not in the README's table"
        assert spec.get("required") is False, f"{name}: the button must deploy with defaults"


def test_one_place_provisions_the_add_on_per_way_of_deploying() -> None:
    settings = [line for line in HEROKU_YML.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "addons" in line], "app.json or the CLI does it"
    deploy = README.split("## Deploy to Heroku", 1)[1].split("\n## ", 1)[0]
    assert "https://www.herokucdn.com/deploy/button.svg" in deploy
    assert deploy.count("heroku addons:create bucketeer") == 1


def test_heroku_builds_the_stock_model_server_on_the_official_python_base() -> None:
    import deploy.image

    args = dockerfile_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert args["MODEL_SERVER"] == "stock"
    assert args["TF_SERVING_VERSION"] == deploy.image.TF_SERVING_VERSION
    assert f"tensorflow/serving:{args['TF_SERVING_VERSION']}" in deploy.image.STOCK_IMAGES[0]
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.M)
    # The model server stage is picked by name: one stage per value of MODEL_SERVER.
    assert re.search(r"^FROM model-server-\$\{MODEL_SERVER\} AS model-server$", DOCKERFILE, re.M)
    assert {"stock", "local"} == set(
        re.findall(r"^FROM \S+ AS model-server-(\w+)$", DOCKERFILE, re.M)
    )


def dockerignore_allowed() -> set[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, "an allow-list: ignore everything, then name what the build copies"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_the_build_context_is_exactly_what_the_dockerfile_copies() -> None:
    assert dockerignore_allowed() == set(dockerfile_copies())
    ignored = (REPO_ROOT / ".dockerignore").read_text()
    for secret in (".env*", "__pycache__", "gateway/_proto"):
        assert secret in ignored
