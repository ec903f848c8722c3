"""A request's images made ready for the model: fetched (a batch in parallel), vetted, encoded or
resized as the signature's input plan says, then sent as one input tensor the signature takes."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

from gateway._proto.dynoserve.tensorflow import tensor_pb2
from gateway.client import Signature, float_tensor, string_tensor
from gateway.errors import GatewayError
from gateway.fetch import ImageFetcher
from gateway.images import check_image, encoded_for_graph, pixels_for_graph
from gateway.metrics import Metrics
from gateway.results import ImageInput, ItemResult
from gateway.signatures import InputPlan, check_tensor


class ImagePreparer:
    """Fetches and vets a request's images; thread-safe. Per-image errors stay with their item,
    so one bad URL spoils nothing."""

    def __init__(self, fetcher: ImageFetcher, max_pixels: int, metrics: Metrics | None) -> None:
        self.fetcher = fetcher
        self.max_pixels = max_pixels
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    def close(self) -> None:
        """Stop the fetch threads (the fetcher is its owner's to close)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def prepare_all(
        self, images: tuple[ImageInput, ...], plan: InputPlan
    ) -> tuple[list[ItemResult], list[tuple[int, bytes]]]:
        """An item per image, and (index, payload) for each image ready to send."""
        if len(images) == 1:
            outcomes = [self._prepare(images[0], plan)]
        else:
            # Each task runs in a copy of this request's context, so logs keep its request id.
            tasks = [
                self._pool.submit(contextvars.copy_context().run, self._prepare, image, plan)
                for image in images
            ]
            outcomes = [task.result() for task in tasks]
        items: list[ItemResult] = []
        payloads: list[tuple[int, bytes]] = []
        for index, (item, payload) in enumerate(outcomes):
            items.append(item)
            if payload is not None:
                payloads.append((index, payload))
        return items, payloads

    def _prepare(self, image: ImageInput, plan: InputPlan) -> tuple[ItemResult, bytes | None]:
        item = ItemResult()
        try:
            data = image.data if image.data is not None else self._fetch(image.url or "", item)
            checked = check_image(data, self.max_pixels)
            if plan.kind == "encoded":
                return item, encoded_for_graph(checked)
            return item, pixels_for_graph(checked, plan.height, plan.width)
        except GatewayError as exc:
            item.error = exc
            return item, None

    def _fetch(self, url: str, item: ItemResult) -> bytes:
        start = time.perf_counter()
        outcome = "error"
        try:
            fetched = self.fetcher.fetch(url)
            outcome = "ok"
            if self.metrics is not None:
                self.metrics.fetch_bytes.observe(len(fetched.data))
            return fetched.data
        finally:
            elapsed = time.perf_counter() - start
            item.fetch_ms = elapsed * 1000
            if self.metrics is not None:
                self.metrics.fetch.labels(outcome).observe(elapsed)


def input_tensor(
    plan: InputPlan, signature: Signature, payloads: list[bytes]
) -> tensor_pb2.TensorProto:
    """The batch as the plan's one input tensor, checked against the signature."""
    tensor = (
        string_tensor(payloads)
        if plan.kind == "encoded"
        else float_tensor(payloads, plan.height, plan.width)
    )
    check_tensor(plan.key, signature.inputs[plan.key], tensor)
    return tensor
