"""TF Serving's command line, parsed as tensorflow::Flags::Parse does, into ServerOptions.

Flags are `--name=value` (bools also bare `--name`); `--name value` is accepted too, a
convenience stock TF Serving lacks (the launcher rewrites it to `--name=value` for the binary).
A malformed value prints the usage and exits 255 like TF Serving; an unknown argument is
reported as TF Serving reports it ("unknown argument: ...") and, as there, does not stop the server.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_INT, _BOOL, _STR, _FLOAT = "int32", "bool", "string", "float"


@dataclass(frozen=True)
class ServerOptions:
    """What the local server was asked to do; the same knobs as TF Serving's Server::Options."""

    port: int = 8500
    """gRPC port (0 disables gRPC)."""
    rest_api_port: int = 0
    """HTTP/REST port; 0 disables REST."""
    rest_api_timeout_in_ms: int = 30000
    """Deadline of a REST predict call."""
    enable_batching: bool = False
    """Run Predict through the server-side batch scheduler."""
    batching_parameters_file: str = ""
    """Text BatchingParameters; TF Serving's defaults when empty."""
    allow_version_labels_for_unavailable_models: bool = False
    """Let a label point at a version that is not AVAILABLE yet."""
    model_config_file: str = ""
    """Text ModelServerConfig; overrides --model_name/--model_base_path."""
    model_config_file_poll_wait_seconds: int = 0
    """Seconds between re-reads of --model_config_file; 0 reads it once."""
    model_name: str = "default"
    """Model name in single-model mode."""
    model_base_path: str = ""
    """Model base path in single-model mode."""
    file_system_poll_wait_seconds: int = 1
    """Seconds between scans for new versions; 0 scans once."""
    max_num_load_retries: int = 5
    """Retries after a failed version load."""
    load_retry_interval_micros: int = 60_000_000
    """Wait between load retries."""
    tensorflow_session_parallelism: int = 0
    """Both TF thread pools, when the specific flags are 0."""
    tensorflow_intra_op_parallelism: int = 0
    """TF intra-op threads; 0 lets TF choose."""
    tensorflow_inter_op_parallelism: int = 0
    """TF inter-op threads; 0 lets TF choose."""
    grpc_max_threads: int = 0
    """gRPC handler threads; 0 picks a size that lets concurrent requests reach the batcher."""
    enable_model_warmup: bool = True
    """Replay assets.extra/tf_serving_warmup_requests before a version becomes AVAILABLE."""
    num_request_iterations_for_warmup: int = 1
    """Times each warmup record is replayed."""
    monitoring_config_file: str = ""
    """Text MonitoringConfig (Prometheus endpoint)."""
    saved_model_tags: str = "serve"
    """Comma-separated MetaGraph tags to load."""
    version: bool = False
    """Print the version and exit."""
    ignored: tuple[str, ...] = field(default=())
    """TF Serving flags that were given but that this server does not implement."""
    unknown: tuple[str, ...] = field(default=())
    """Arguments TF Serving would not recognise."""


# Flags this server implements: name -> type. Types and defaults follow TF Serving's main.cc.
SUPPORTED: dict[str, str] = {
    f.name: {int: _INT, bool: _BOOL, str: _STR}[type(f.default)]
    for f in dataclasses.fields(ServerOptions)
    if f.name not in ("ignored", "unknown")
}

# TF Serving flags accepted with a warning: meaningless here (TPU, TFLite, TLS...) or not built.
ACCEPTED_WITH_WARNING: dict[str, str] = {
    "grpc_socket_path": _STR,
    "rest_api_num_threads": _INT,
    "rest_api_enable_cors_support": _BOOL,
    "enable_per_model_batching_parameters": _BOOL,
    "num_load_threads": _INT,
    "num_unload_threads": _INT,
    "flush_filesystem_caches": _BOOL,
    "tensorflow_session_config_file": _STR,
    "use_alts_credentials": _BOOL,
    "ssl_config_file": _STR,
    "platform_config_file": _STR,
    "per_process_gpu_memory_fraction": _FLOAT,
    "grpc_channel_arguments": _STR,
    "remove_unused_fields_from_bundle_metagraph": _BOOL,
    "prefer_tflite_model": _BOOL,
    "num_tflite_pools": _INT,
    "num_tflite_interpreters_per_pool": _INT,
    "enable_signature_method_name_check": _BOOL,
    "xla_cpu_compilation_enabled": _BOOL,
    "enable_profiler": _BOOL,
    "thread_pool_factory_config_file": _STR,
}

ALL_FLAGS: dict[str, str] = {**SUPPORTED, **ACCEPTED_WITH_WARNING}


class FlagValueError(ValueError):
    """A known flag with a value of the wrong type (TF Serving prints usage and exits)."""


def _convert(name: str, kind: str, raw: str | None) -> Any:
    if kind == _BOOL:
        if raw is None or raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
    elif raw is not None:
        try:
            return {_INT: int, _FLOAT: float, _STR: str}[kind](raw)
        except ValueError:
            pass
    raise FlagValueError(f"Couldn't interpret value {raw} for flag {name}.")


def _split(arg: str) -> tuple[str, str | None] | None:
    """('name', value or None) for `--name[=value]` (TF's only form), None for other text."""
    if not arg.startswith("--") or arg == "--":
        return None
    name, eq, value = arg[2:].partition("=")
    return name, (value if eq else None)


def parse(argv: Sequence[str]) -> ServerOptions:
    """ServerOptions from argv (without the program name); FlagValueError on a bad value."""
    values: dict[str, Any] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        split = _split(args[i])
        if split is None or split[0] not in ALL_FLAGS:
            unknown.append(args[i])
            i += 1
            continue
        name, raw = split
        kind = ALL_FLAGS[name]
        if raw is None and kind != _BOOL and i + 1 < len(args):
            raw = args[i + 1]
            i += 1
        value = _convert(name, kind, raw)
        if name in SUPPORTED:
            values[name] = value
        else:
            ignored.append(name)
        i += 1
    return ServerOptions(**values, ignored=tuple(ignored), unknown=tuple(unknown))


def canonical_argv(argv: Sequence[str]) -> list[str]:
    """argv rewritten to the `--name=value` form stock tensorflow_model_server requires."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        split = _split(args[i])
        if split is not None and split[0] in ALL_FLAGS:
            name, raw = split
            if raw is None and ALL_FLAGS[name] != _BOOL and i + 1 < len(args):
                raw = args[i + 1]
                i += 1
            out.append(f"--{name}" if raw is None else f"--{name}={raw}")
        else:
            out.append(args[i])
        i += 1
    return out


def read_flags_file(path: str) -> list[str]:
    """`--name=value` lines of a flags file (# comments); relative file values made absolute."""
    folder = Path(path).resolve().parent
    argv = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        split = _split(line)
        if split is not None and split[1] and split[0].endswith("_file"):
            value = split[1] if os.path.isabs(split[1]) else str(folder / split[1])
            line = f"--{split[0]}={value}"
        argv.append(line)
    return argv


def with_defaults(argv: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """argv plus every default flag argv does not set itself (the command line wins)."""
    given = {split[0] for split in map(_split, argv) if split is not None}
    extra = [arg for arg in defaults if (split := _split(arg)) is None or split[0] not in given]
    return [*extra, *argv]


def usage(program: str = "tensorflow_model_server") -> str:
    """A usage text in the shape of tensorflow::Flags::Usage."""
    defaults = {f.name: f.default for f in dataclasses.fields(ServerOptions)}
    lines = [f"usage: {program}", "Flags:"]
    for name, kind in ALL_FLAGS.items():
        default = defaults.get(name, "")
        note = "" if name in SUPPORTED else "\taccepted, ignored by the local server"
        lines.append(f"\t--{name}={default!s}\t{kind}{note}")
    return "\n".join(lines) + "\n"


def parse_or_exit(argv: Sequence[str], program: str) -> ServerOptions:
    """parse(), exiting as TF Serving does on a malformed value or --help (usage, status 255)."""
    if "--help" in argv:
        sys.stdout.write(usage(program))
        raise SystemExit(255)
    try:
        return parse(argv)
    except FlagValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.stdout.write(usage(program))
        sys.stdout.flush()
        raise SystemExit(255) from exc
