"""`python -m deploy.image build|run`: the dyno's image with whichever container engine works
here (docker, else podman), built as Heroku builds it where a registry is reachable, and run
the way a dyno runs it (random $PORT, a uid that is not the image's, a memory limit, app.json's
environment). Standard library only: `make image` needs no virtualenv.

Where no registry is reachable, the one Dockerfile is built with two build arguments that swap
only what cannot be pulled: BASE_IMAGE, a Debian 12 + Python 3.11 root file system made from
Debian's packages with mmdebstrap, and MODEL_SERVER=local (the project's TF-Serving-compatible
server instead of the stock binary).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.net import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "dynoserve"
TF_SERVING_VERSION = "2.20.0"  # the Dockerfile's default; a test keeps the two equal
STOCK_IMAGES = (
    f"docker.io/tensorflow/serving:{TF_SERVING_VERSION}",
    "docker.io/library/python:3.11-slim-bookworm",
)
LOCAL_BASE = "localhost/dynoserve-base:bookworm"
# python-is-python3: `python`, as python:3.11-slim has it; passwd: useradd for the Dockerfile.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
IMAGE_UID = 10001  # the Dockerfile's USER; Heroku runs another
DYNO_MEMORY = {"eco": "512m", "basic": "512m", "standard-1x": "512m", "standard-2x": "1g"}
# Heroku sends SIGTERM to every process, then SIGKILL 30 s later.
STOP_TIMEOUT_S = 30
# podman's default rlimits fail on these machines (setrlimit EPERM); explicit ones work.
ULIMITS = ("--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096")


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: docker, or podman with the runc runtime where crun
    cannot run (cgroup v1/v2 hybrid hosts)."""

    name: str
    argv: tuple[str, ...]

    def run(
        self, *args: str, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], text=True, check=check, **kwargs)

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, capture_output=True).returncode == 0


def find_engine() -> Engine | None:
    """docker when its daemon answers, else podman when installed, else None."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    ):
        return Engine("docker", (docker,))
    podman = shutil.which("podman")
    if podman is None:
        return None
    runtime = ("--runtime", "runc") if shutil.which("runc") else ()
    return Engine("podman", (podman, *runtime))


def registry_reachable(engine: Engine) -> bool:
    """True when the stock build's images are here or can be pulled (tried once, fails fast)."""
    for ref in STOCK_IMAGES:
        if engine.has_image(ref):
            continue
        if engine.run("pull", ref, capture_output=True).returncode != 0:
            return False
    return True


def build_base(engine: Engine, refresh: bool = False) -> str:
    """LOCAL_BASE from Debian 12's packages (about a minute), unless it exists already."""
    if engine.has_image(LOCAL_BASE) and not refresh:
        return LOCAL_BASE
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("deploy.image: mmdebstrap is missing (make image-deps installs it)")
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES]
    # The machine's own Debian sources (mirror and security suite), else mmdebstrap's default.
    argv += ["bookworm", "-", *([str(HOST_SOURCES)] if HOST_SOURCES.exists() else [])]
    print(f"deploy.image: building {LOCAL_BASE} with {' '.join(argv)}", flush=True)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as tar:
        imported = engine.run("import", "-", LOCAL_BASE, stdin=tar.stdout, capture_output=True)
    if tar.returncode != 0 or imported.returncode != 0:
        raise SystemExit(f"deploy.image: base image failed: {imported.stderr}")
    return LOCAL_BASE


def build_argv(engine: Engine, model_server: str, tag: str) -> list[str]:
    """The engine's build command; the local variant swaps the base and model server stage."""
    argv = [*engine.argv, "build", "--network", "host", *ULIMITS, "-t", tag]
    if model_server == "local":
        argv += ["--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "--build-arg", "MODEL_SERVER=local"]
    if engine.name == "podman":
        # pip inside the build reaches the package index with the host's CA certificates.
        argv += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    return [*argv, str(REPO_ROOT)]


def build(engine: Engine, model_server: str = "auto", refresh_base: bool = False) -> str:
    """Build the image; returns its tag (dynoserve:stock or dynoserve:local, also :latest)."""
    if model_server == "auto":
        model_server = "stock" if registry_reachable(engine) else "local"
        print(
            f"deploy.image: model server {model_server} (registry reachable: "
            f"{model_server == 'stock'})",
            flush=True,
        )
    if model_server == "local":
        build_base(engine, refresh_base)
    tag = f"{IMAGE}:{model_server}"
    started = time.monotonic()
    if subprocess.run(build_argv(engine, model_server, tag), check=False).returncode != 0:
        raise SystemExit(f"deploy.image: building {tag} failed")
    engine.run("tag", tag, f"{IMAGE}:latest", check=True)
    print(
        f"deploy.image: built {tag} in {time.monotonic() - started:.0f} s, "
        f"{image_size(engine, tag) / 1e6:.0f} MB",
        flush=True,
    )
    return tag


def image_size(engine: Engine, ref: str) -> int:
    """Bytes of the image's layers, uncompressed (what `podman images` and `docker images` say)."""
    done = engine.run("image", "inspect", "--format", "{{.Size}}", ref, capture_output=True)
    return int(done.stdout.strip() or 0)


def app_json_env(environ: dict[str, str]) -> dict[str, str]:
    """app.json's config vars: the caller's value where set, else app.json's default."""
    spec = json.loads((REPO_ROOT / "app.json").read_text())["env"]
    env = {name: environ.get(name, item.get("value", "")) for name, item in spec.items()}
    return {name: value for name, value in env.items() if value != ""}


@dataclass
class RunOptions:
    """How one container is run; the defaults are a dyno's."""

    image: str = f"{IMAGE}:latest"
    memory: str = "512m"
    port: int = field(default_factory=free_port)
    uid: int = field(
        default_factory=lambda: random.choice(  # noqa: S311 - not a secret
            [u for u in range(20000, 60000) if u != IMAGE_UID]
        )
    )
    exports: Path | None = None
    """A folder of exported models mounted read-only (DYNOSERVE_EXPORT_DIR); None: the bucket."""
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""
    detach: bool = False
    cpus: str = ""


def run_argv(engine: Engine, options: RunOptions) -> list[str]:
    """The engine's run command for one dyno. Host network, but every port on loopback: the
    gateway binds 127.0.0.1:$PORT, the model server free loopback ports (8500 may be taken)."""
    env = {
        "PORT": str(options.port),
        "DYNOSERVE_BIND_HOST": "127.0.0.1",
        "DYNOSERVE_MODEL_SERVER_GRPC_PORT": str(free_port()),
        "DYNOSERVE_MODEL_SERVER_REST_PORT": str(free_port()),
        **options.env,
    }
    argv = [*engine.argv, "run", "--rm", "--network", "host", *ULIMITS]
    argv += ["--user", f"{options.uid}:{options.uid}", "--stop-timeout", str(STOP_TIMEOUT_S)]
    # A hard limit like the dyno's quota: no swap beyond it, so "fits" means fits in memory.
    argv += ["--memory", options.memory, "--memory-swap", options.memory]
    if options.cpus:
        argv += ["--cpus", options.cpus]
    if options.name:
        argv += ["--name", options.name]
    if options.detach:
        argv.append("--detach")
    if options.exports is not None:
        argv += ["-v", f"{options.exports.resolve()}:/exports:ro"]
        env["DYNOSERVE_EXPORT_DIR"] = "/exports"
    for name, value in sorted(env.items()):
        argv += ["--env", f"{name}={value}"]
    return [*argv, options.image]


def bucket_env(environ: dict[str, str]) -> dict[str, str]:
    """The Bucketeer variables and the S3 endpoint override from the caller's environment."""
    prefixes = ("BUCKETEER_", "DYNOSERVE_S3_")
    return {k: v for k, v in environ.items() if k.startswith(prefixes) and v}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image (docker, else podman)")
    b.add_argument("--model-server", choices=("auto", "stock", "local"), default="auto")
    b.add_argument("--refresh-base", action="store_true", help="rebuild the local Debian base")
    r = sub.add_parser("run", help="run the image as a dyno (Ctrl-C stops it as Heroku does)")
    r.add_argument("--image", default=f"{IMAGE}:latest")
    r.add_argument("--memory", default="512m", help="512m (Eco/Basic/Standard-1X), 1g (2X)")
    r.add_argument("--port", type=int, default=0, help="$PORT; 0: a random free one")
    r.add_argument("--exports", type=Path, default=REPO_ROOT / "exports")
    r.add_argument("--cpus", default="")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    engine = find_engine()
    if engine is None:
        print(
            "deploy.image: no container engine (make image-deps installs podman)", file=sys.stderr
        )
        return 2
    if args.command == "build":
        build(engine, args.model_server, args.refresh_base)
        return 0
    return run(engine, args)


def run(engine: Engine, args: argparse.Namespace) -> int:
    """Replace this process with the engine's `run`: its Ctrl-C reaches the dyno as SIGTERM."""
    environ = dict(os.environ)
    bucket = bucket_env(environ)
    options = RunOptions(
        image=args.image,
        memory=DYNO_MEMORY.get(args.memory.lower(), args.memory),
        exports=None if "BUCKETEER_BUCKET_NAME" in bucket else args.exports,
        env={**app_json_env(environ), **bucket},
        cpus=args.cpus,
    )
    if args.port:
        options.port = args.port
    source = "the bucket" if options.exports is None else str(options.exports)
    print(
        f"deploy.image: http://127.0.0.1:{options.port}/ as uid {options.uid}, "
        f"--memory {options.memory}, models from {source}; Ctrl-C sends SIGTERM",
        flush=True,
    )
    command = run_argv(engine, options)
    os.execvp(command[0], command)  # noqa: S606 - the engine takes over this terminal
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
