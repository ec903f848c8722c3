"""Compile the TF Serving config protos the pip package lacks into a committed descriptor set.

`tensorflow-serving-api` ships ModelServerConfig but not BatchingParameters or MonitoringConfig;
the local server must still parse those files with the official messages, so their .proto
sources live in serving/local/protos and are compiled here (dev only: needs grpcio-tools) into
serving/local/protos/descriptors.binpb, which the runtime loads without protoc.
Run: python -m serving.local.protogen [--check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO_ROOT = Path(__file__).resolve().parent / "protos"
DESCRIPTOR_SET = PROTO_ROOT / "descriptors.binpb"
SOURCES = (
    "tensorflow_serving/config/monitoring_config.proto",
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
)


def _dependency_set() -> descriptor_pb2.FileDescriptorSet:
    """The already-compiled TensorFlow protos our sources import, taken from TF's own modules."""
    from google.protobuf import wrappers_pb2
    from tensorflow.core.protobuf import config_pb2, named_tensor_pb2

    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file_descriptor: object) -> None:
        name = file_descriptor.name  # type: ignore[attr-defined]
        if name in seen:
            return
        for dependency in file_descriptor.dependencies:  # type: ignore[attr-defined]
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)  # type: ignore[attr-defined]
        seen[name] = proto

    for module in (wrappers_pb2, config_pb2, named_tensor_pb2):
        add(module.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(seen.values()))


def compile_descriptor_set() -> bytes:
    """Run protoc over SOURCES and return the serialized FileDescriptorSet (sources only)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        deps = Path(tmp) / "deps.binpb"
        out = Path(tmp) / "out.binpb"
        deps.write_bytes(_dependency_set().SerializeToString())
        args = [
            "protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--descriptor_set_in={deps}",
            f"--descriptor_set_out={out}",
            *SOURCES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + ", ".join(SOURCES))
        return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed set is stale")
    args = parser.parse_args(argv)
    fresh = compile_descriptor_set()
    if args.check:
        current = DESCRIPTOR_SET.read_bytes() if DESCRIPTOR_SET.exists() else b""
        if current != fresh:
            stale = f"{DESCRIPTOR_SET} is stale: run python -m serving.local.protogen"
            print(stale, file=sys.stderr)
            return 1
        return 0
    tmp = DESCRIPTOR_SET.with_suffix(".tmp")
    tmp.write_bytes(fresh)
    tmp.replace(DESCRIPTOR_SET)
    print(f"wrote {DESCRIPTOR_SET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
