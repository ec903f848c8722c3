"""Where one request's wall time goes, from the processes' own histograms.

The gateway's /metrics and the model server's Prometheus page each keep a sum and a count per
histogram; two snapshots around a step give the mean of each stage over exactly that step's
requests. Nested, from the outside in:

  client wall                    what the load client measured (HTTP round trip)
    gateway request              dynoserve_gateway_request_duration_seconds (the predict route)
      fetch                      dynoserve_gateway_fetch_duration_seconds (image by URL)
      inference                  dynoserve_gateway_inference_duration_seconds (gRPC Predict)
        server request           :tensorflow:serving:request_latency (the server's Predict)
          model run              :tensorflow:serving:runtime_latency (the signature call)

The differences are the parts no histogram names: the client's HTTP and the gateway's framework
outside the view (client - gateway), the gateway's own work in the view (gateway - fetch -
inference: image check, request bytes, ranking, JSON), gRPC's transport both ways plus the
server's deserialisation before its timer starts (inference - server request), and the server's
own path around the signature (server request - model run). Means, not medians: at one client
they are close, and sums are all the pages keep.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

# (name in the result, metric, label filter): each summed over the series that match.
GATEWAY = (
    ("gateway_request", "dynoserve_gateway_request_duration_seconds", ':predict"'),
    ("fetch", "dynoserve_gateway_fetch_duration_seconds", 'outcome="ok"'),
    ("inference", "dynoserve_gateway_inference_duration_seconds", ""),
)
SERVER = (
    ("server_request", ":tensorflow:serving:request_latency", 'API="predict"'),
    ("model_run", ":tensorflow:serving:runtime_latency", 'API="Predict"'),
)
_SCALE = {"gateway": 1000.0, "server": 1e-3}  # seconds -> ms; microseconds -> ms

Snapshot = dict[str, tuple[float, float]]


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def sums(page: str, metric: str, label: str) -> tuple[float, float]:
    """(sum, count) of a histogram over the series whose labels contain `label`."""
    total = count = 0.0
    pattern = rf"^{re.escape(metric)}_(sum|count)(\{{[^}}]*\}})? (\S+)$"
    for kind, labels, value in re.findall(pattern, page, re.M):
        if label and label not in labels:
            continue
        if kind == "sum":
            total += float(value)
        else:
            count += float(value)
    return total, count


def snapshot(gateway_metrics_url: str, server_metrics_url: str) -> Snapshot:
    """Every stage's (sum in ms, count) now."""
    found: Snapshot = {}
    for side, url, stages in (
        ("gateway", gateway_metrics_url, GATEWAY),
        ("server", server_metrics_url, SERVER),
    ):
        text = page(url)
        for name, metric, label in stages:
            total, count = sums(text, metric, label)
            found[name] = (total * _SCALE[side], count)
    return found


def breakdown(before: Snapshot, after: Snapshot, client_mean_ms: float) -> dict[str, Any]:
    """Mean ms per request of each stage between the snapshots, and the parts between them."""
    means: dict[str, Any] = {"client": round(client_mean_ms, 2)}
    counts: dict[str, int] = {}
    for name in after:
        total = after[name][0] - before[name][0]
        count = after[name][1] - before[name][1]
        counts[name] = int(count)
        means[name] = round(total / count, 2) if count else None
    parts: dict[str, Any] = {}
    if None not in means.values():
        parts = {
            "client_http_and_gateway_framework": means["client"] - means["gateway_request"],
            "gateway_own": means["gateway_request"] - means["fetch"] - means["inference"],
            "fetch": means["fetch"],
            "grpc_transport_and_decode": means["inference"] - means["server_request"],
            "server_own": means["server_request"] - means["model_run"],
            "model_run": means["model_run"],
        }
        parts = {key: round(value, 2) for key, value in parts.items()}
    return {"means_ms": means, "counts": counts, "parts_ms": parts}
