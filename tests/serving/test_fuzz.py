"""Fuzz: seeded random tensors and JSON bodies to both signatures over gRPC and REST.

Random dtypes (valid, reference, unknown enums), ranks 0-7, dims from 0 to 2**62 and negative,
values too few, too many or none, garbage tensor_content, garbage JSON. Every request must get
an answer (OK or INVALID_ARGUMENT, 200 or 400), the server must stay up, and every request that
matches the signature must succeed, also when it shares a batch with bad ones.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.serving.helpers import GREEN, RED, Server, copy_versions, jpeg, running_server

pytestmark = pytest.mark.slow

SEED = 13
GRPC_CASES = 1000
REST_CASES = 400
# Whole-run bound per server; a hang fails the test instead of stalling CI.
BUDGET_SECONDS = 240
SIGNATURES = {"serving_default": "images", "predict_pixels": "pixels"}
_DTYPES = [v for v in types_pb2.DataType.values() if v != types_pb2.DT_INVALID]
_ODD_DTYPES = [types_pb2.DT_INVALID, types_pb2.DT_FLOAT_REF, 999, 2**20]
_DIMS = [0, 1, 2, 3, 5, 32, 1000, 10**5, 10**9, 2**62, -1, -7]
_JPEGS = [jpeg(RED), jpeg(GREEN, size=40)]


@dataclass(frozen=True)
class Case:
    """One request and whether it matches the signature (then it must succeed)."""

    send: Callable[[Server], tuple[str, str]]
    must_succeed: bool


def _random_dims(rng: random.Random) -> list[int]:
    return [rng.choice(_DIMS) for _ in range(rng.randrange(0, 8))]


def _fill_values(rng: random.Random, tensor: Any, count: int) -> None:
    dtype = tensor.dtype
    if dtype == types_pb2.DT_STRING:
        tensor.string_val.extend(rng.randbytes(rng.randrange(0, 40)) for _ in range(count))
    elif dtype in (types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        tensor.float_val.extend(rng.uniform(-1e30, 1e30) for _ in range(count))
    elif dtype in (types_pb2.DT_DOUBLE,):
        tensor.double_val.extend(rng.uniform(-1e300, 1e300) for _ in range(count))
    elif dtype in (types_pb2.DT_INT64,):
        tensor.int64_val.extend(rng.randrange(-(2**63), 2**63) for _ in range(count))
    elif dtype == types_pb2.DT_BOOL:
        tensor.bool_val.extend(rng.random() < 0.5 for _ in range(count))
    else:
        tensor.int_val.extend(rng.randrange(-(2**31), 2**31) for _ in range(count))


def _random_tensor(rng: random.Random, right_dtype: int) -> Any:
    tensor = tensor_pb2.TensorProto()
    roll = rng.random()
    tensor.dtype = right_dtype if roll < 0.5 else rng.choice(_DTYPES if roll < 0.9 else _ODD_DTYPES)
    if rng.random() < 0.05:
        tensor.tensor_shape.unknown_rank = True
    for size in _random_dims(rng):
        tensor.tensor_shape.dim.add().size = size
    how = rng.randrange(4)
    if how in (1, 3):
        _fill_values(rng, tensor, rng.choice([1, 2, 7, 3072, 5000]))
    if how in (2, 3):
        tensor.tensor_content = rng.randbytes(rng.choice([1, 3, 4, 12, 4 * 3072, 10_000]))
    return tensor


def _valid_tensor(rng: random.Random, alias: str) -> Any:
    rows = rng.randrange(0, 4)
    tensor = tensor_pb2.TensorProto()
    tensor.tensor_shape.dim.add().size = rows
    if alias == "images":
        tensor.dtype = types_pb2.DT_STRING
        tensor.string_val.extend(rng.choice(_JPEGS) for _ in range(rows))
        return tensor
    tensor.dtype = types_pb2.DT_FLOAT
    for size in (32, 32, 3):
        tensor.tensor_shape.dim.add().size = size
    floats = [rng.uniform(0, 255) for _ in range(rows * 32 * 32 * 3)]
    if rng.random() < 0.5:
        tensor.float_val.extend(floats)
    else:
        tensor.tensor_content = struct.pack(f"<{len(floats)}f", *floats)
    return tensor


def _grpc_case(rng: random.Random) -> Case:
    signature = rng.choice(list(SIGNATURES))
    alias = SIGNATURES[signature]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    valid = rng.random() < 0.2
    right = types_pb2.DT_STRING if alias == "images" else types_pb2.DT_FLOAT
    tensor = _valid_tensor(rng, alias) if valid else _random_tensor(rng, right)
    name = alias if valid or rng.random() < 0.85 else rng.choice(["pixels", "images", "x", ""])
    request.inputs[name].CopyFrom(tensor)

    def send(server: Server) -> tuple[str, str]:
        try:
            server.predict.Predict(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", ""

    return Case(send, valid)


def _random_json(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.35:
        return rng.choice(
            [
                rng.uniform(-1e40, 1e40),
                rng.randrange(-(10**30), 10**30),
                10**400,
                "x" * rng.randrange(5),
                {"b64": base64.b64encode(rng.randbytes(9)).decode()},
                {"b64": "***"},
                True,
                None,
                {"k": 1},
            ]
        )
    return [_random_json(rng, depth - 1) for _ in range(rng.choice([0, 1, 2, 3, 32]))]


def _valid_json(rng: random.Random, signature: str) -> Any:
    rows = rng.randrange(1, 3)
    if signature == "serving_default":
        return [{"b64": base64.b64encode(rng.choice(_JPEGS)).decode()} for _ in range(rows)]
    pixel = [rng.uniform(0, 255) for _ in range(3)]
    return [[[pixel] * 32] * 32 for _ in range(rows)]


def _rest_body(rng: random.Random) -> tuple[bytes, bool]:
    signature = rng.choice([*SIGNATURES, "nope", 7])
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randrange(0, 64)), False
    if roll < 0.15:
        return b"[" * 100_000, False
    if roll < 0.35 and isinstance(signature, str) and signature in SIGNATURES:
        document: Any = {"signature_name": signature, "instances": _valid_json(rng, signature)}
        return json.dumps(document).encode(), True
    key = rng.choice(["instances", "inputs"])
    value = _random_json(rng, rng.randrange(0, 6))
    if key == "inputs" and rng.random() < 0.5:
        value = {rng.choice(["pixels", "images", "x"]): value}
    document = {"signature_name": signature, key: value}
    return json.dumps(document).encode(), False


def _rest_case(rng: random.Random) -> Case:
    body, valid = _rest_body(rng)

    def send(server: Server) -> tuple[str, str]:
        status, answer = server.rest("POST", "/v1/models/tiny:predict", body)
        assert isinstance(answer, dict), f"{status}: not a JSON object: {answer!r}"[:300]
        return str(status), str(answer.get("error", ""))

    return Case(send, valid)


def _cases() -> Iterator[tuple[str, Case]]:
    rng = random.Random(SEED)
    for _ in range(GRPC_CASES):
        yield "grpc", _grpc_case(rng)
    for _ in range(REST_CASES):
        yield "rest", _rest_case(rng)


ANSWERS = {"grpc": {"OK", "INVALID_ARGUMENT"}, "rest": {"200", "400"}}
SUCCESS = {"grpc": "OK", "rest": "200"}


def _fuzz(server: Server, workers: int) -> Counter[str]:
    cases = list(_cases())
    started = time.monotonic()

    def run(item: tuple[str, Case]) -> tuple[str, str, str, bool]:
        transport, case = item
        if time.monotonic() - started > BUDGET_SECONDS:
            return transport, "SKIPPED", "over budget", case.must_succeed
        code, details = case.send(server)
        return transport, code, details, case.must_succeed

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(run, cases))
    counts: Counter[str] = Counter(f"{t}:{code}" for t, code, _, _ in outcomes)
    print(f"fuzz: {len(cases)} requests in {time.monotonic() - started:.1f} s: {dict(counts)}")
    for transport, code, details, must_succeed in outcomes:
        assert code in ANSWERS[transport], f"{transport} answered {code}: {details}"
        if must_succeed:
            assert code == SUCCESS[transport], f"a valid {transport} request failed: {details}"
    assert server.process.alive(), "the server process died"
    return counts


def test_fuzz_direct(shared_server: Server) -> None:
    counts = _fuzz(shared_server, workers=1)
    assert counts["grpc:OK"]
    assert counts["grpc:INVALID_ARGUMENT"]
    assert counts["rest:200"]
    assert counts["rest:400"]


def test_fuzz_batching_bad_requests_fail_alone(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 1000 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    args = [
        "--model_name=tiny",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
    ]
    with running_server(tmp_path / "server.log", args) as server:
        counts = _fuzz(server, workers=6)
    assert counts["grpc:OK"]
    assert counts["rest:200"]
