"""The benchmark's peer (bench/peer.py): the benchmark SavedModel served by BentoML as a user of
that popular Python serving framework would serve it: TensorFlow in the server's own process,
BentoML's adaptive batching, one worker, the same `serving_default` signature (JPEG bytes,
decoded in the graph) that Dynoserve's model server runs.

Loaded only by `bentoml serve bench.peer_service:PeerService` inside var/peer-venv
(requirements/peer.txt), never by the project's own environments, never in the image; it imports
nothing of the project. `bentoml serve` imports this module in its supervising process as well,
so TensorFlow is imported only when the worker builds the service.

    POST /classify  {"image_url": "http://..."}
    200 [{"classes": [5 names], "scores": [5 probabilities]}]

(BentoML answers a request to a batchable API with a list, one entry per input; the parameter
accepts one URL or a list of them.)

The image is fetched by URL with httpx and NONE of Dynoserve's guards: no check of the address
(loopback, private and cloud-metadata addresses are fetched alike: SSRF), no limit on size,
pixels or time to first byte beyond one 30 s timeout, redirects not followed. A corrupt image
or a failed fetch fails every request of its batch. Fit for a loopback benchmark, never for a
network.

Settings, read once at import (bench/peer.py sets them; the defaults are its choices):
- PEER_MODEL_DIR: the SavedModel version folder (…/mobilenet/1).
- PEER_MAX_BATCH_SIZE (8): the largest batch the dispatcher forms. Past 8 images this model is
  no cheaper per image on these machines and takes more memory (serving/batching.config's
  measurements); Dynoserve's model server runs batches of at most 8 too.
- PEER_MAX_LATENCY_MS (10000): the dispatcher answers 503 for a queued request whose estimated
  latency passes it. 10 s, BentoML's classic default (mb_max_latency), answers 100 closed-loop
  clients (about 1.5 s each here) as Dynoserve does, well inside Heroku's 30 s router limit.
  The dispatcher (bentoml/_internal/marshal/dispatcher.py, CorkDispatcher) holds a batch back
  while n x (the newest request's wait + the per-image time) stays under 0.95 x the mean
  first-request wait of its last 50 batches: after a burst of load that mean is long, and a
  lone request waits about that long, for as many batches as the mean takes to fall.
- PEER_TF_THREADS (2): TensorFlow's intra- and inter-op threads, as Dynoserve's launcher sets
  them on a 2-CPU machine; one worker process, because a second would hold a second TensorFlow
  runtime (~1 GB) and split the batches on the same two cores.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

import anyio
import bentoml
import httpx
from pydantic import BeforeValidator

MODEL_DIR = os.environ.get("PEER_MODEL_DIR", "var/bench-models/mobilenet/1")
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "8"))
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "10000"))
TF_THREADS = int(os.environ.get("PEER_TF_THREADS", "2"))
TOP_K = 5
FETCH_TIMEOUT_S = 30.0


def one_or_many(value: Any) -> Any:
    """`{"image_url": "..."}` as a batch of one: a batchable API's parameter is a list."""
    return [value] if isinstance(value, str) else value


ImageUrls = Annotated[list[str], BeforeValidator(one_or_many)]


@bentoml.service(workers=1, traffic={"timeout": 60})
class PeerService:
    def __init__(self) -> None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
        self.tf = tf
        self.signature = tf.saved_model.load(MODEL_DIR).signatures["serving_default"]
        # One pool of keep-alive connections to the image hosts, as Dynoserve's gateway keeps.
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        self.http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, limits=limits)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    async def classify(self, image_url: ImageUrls) -> list[dict[str, Any]]:
        """Fetch the batch's images at once, then run them as one batch in a worker thread
        (the event loop goes on accepting and parsing requests meanwhile)."""
        bodies = await asyncio.gather(*(self.fetch(url) for url in image_url))
        return await anyio.to_thread.run_sync(self.top_classes, bodies)

    async def fetch(self, url: str) -> bytes:
        response = await self.http.get(url)
        response.raise_for_status()
        return response.content

    def top_classes(self, images: list[bytes]) -> list[dict[str, Any]]:
        outputs = self.signature(images=self.tf.constant(images))
        probabilities = outputs["probabilities"].numpy()
        classes = outputs["classes"].numpy()
        answers = []
        for row, names in zip(probabilities, classes, strict=True):
            best = (-row).argsort(kind="stable")[:TOP_K]  # ties in class order, as Dynoserve
            answers.append(
                {
                    "classes": [names[i].decode() for i in best],
                    "scores": [round(float(row[i]), 6) for i in best],
                }
            )
        return answers
