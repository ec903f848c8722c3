"""bench.walltime: histogram sums read off Prometheus text, and the stages' means and parts."""

from __future__ import annotations

from bench import walltime

PAGE = """\
# HELP dynoserve_gateway_request_duration_seconds HTTP request latency by route pattern.
dynoserve_gateway_request_duration_seconds_sum{route="/v1/models/<model>:predict"} 3.0
dynoserve_gateway_request_duration_seconds_count{route="/v1/models/<model>:predict"} 100.0
dynoserve_gateway_request_duration_seconds_sum{route="/healthz"} 9.0
dynoserve_gateway_request_duration_seconds_count{route="/healthz"} 9.0
dynoserve_gateway_request_duration_seconds_bucket{route="/healthz",le="0.1"} 9.0
:tensorflow:serving:request_latency_sum{model_name="m",API="predict",entrypoint="GRPC"} 2500.0
:tensorflow:serving:request_latency_count{model_name="m",API="predict",entrypoint="GRPC"} 1.0
"""


def test_sums_add_the_matching_series_only() -> None:
    metric = "dynoserve_gateway_request_duration_seconds"
    assert walltime.sums(PAGE, metric, ':predict"') == (3.0, 100.0)
    assert walltime.sums(PAGE, metric, "") == (12.0, 109.0)
    assert walltime.sums(PAGE, ":tensorflow:serving:request_latency", 'API="predict"') == (
        2500.0,
        1.0,
    )
    assert walltime.sums(PAGE, "no_such_metric", "") == (0.0, 0.0)


def test_breakdown_means_and_the_parts_between_stages() -> None:
    stages = ("gateway_request", "fetch", "inference", "server_request", "model_run")
    before = dict.fromkeys(stages, (0.0, 0.0))
    after = {
        "gateway_request": (300.0, 10.0),
        "fetch": (10.0, 10.0),
        "inference": (250.0, 10.0),
        "server_request": (230.0, 10.0),
        "model_run": (220.0, 10.0),
    }
    found = walltime.breakdown(before, after, client_mean_ms=32.0)
    assert found["means_ms"]["gateway_request"] == 30.0
    assert found["parts_ms"] == {
        "client_http_and_gateway_framework": 2.0,
        "gateway_own": 4.0,
        "fetch": 1.0,
        "grpc_transport_and_decode": 2.0,
        "server_own": 1.0,
        "model_run": 22.0,
    }
    empty = walltime.breakdown(before, before, client_mean_ms=1.0)
    assert empty["parts_ms"] == {}
    assert empty["counts"]["fetch"] == 0
