"""A request's images made ready for the model: fetched (a batch in parallel, under the fetch
bound and each client's fair share of it), vetted, encoded or resized as the signature's input
plan says, then sent as one input tensor the signature takes."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from gateway._proto.dynoserve.tensorflow import tensor_pb2
from gateway.answercache import digest
from gateway.client import Signature, float_tensor, string_tensor
from gateway.deadline import Deadline
from gateway.errors import BadRequest, DeadlineExceeded, FetchCapacity, GatewayError
from gateway.fairness import FairShares, Refusal
from gateway.fetch import ImageFetcher
from gateway.images import check_image, encoded_for_graph, pixels_for_graph
from gateway.interface import ImageInput, ItemResult
from gateway.metrics import Metrics
from gateway.signatures import InputPlan, check_tensor

Outcome = tuple[ItemResult, bytes | None]
# Told an image's digest, whether its answer is known already (gateway/answercache.py): then it
# is neither vetted nor decoded again, and no payload is made for it.
Recall = Callable[[bytes], bool]


class ImagePreparer:
    """Fetches and vets a request's images; thread-safe. Per-image errors stay with their item,
    so one bad URL spoils nothing.

    A request takes a fetch slot per URL before fetching any (FairShares pool "fetches", at most
    `max_fetches`): past the bound it is refused at once (503 fetch_capacity), past its client's
    fair share under contention 429. The calling (waitress) thread fetches the first URL itself;
    the rest of a batch run on threads of a pool as large as the bound, so a fetch holding a
    slot never waits for a thread (the old shared 8-thread pool queued outside every deadline).
    """

    def __init__(
        self,
        fetcher: ImageFetcher,
        max_pixels: int,
        metrics: Metrics | None,
        max_fetches: int = 256,
    ) -> None:
        self.fetcher = fetcher
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.fetches = FairShares("fetches", max_fetches, on_refusal=self._count_refusal)
        # Threads start only when needed and are reused: idle ones cost about 16 KB RSS each.
        self._pool = ThreadPoolExecutor(max_workers=max_fetches, thread_name_prefix="fetch")
        if metrics is not None:
            metrics.fetches_in_progress.set_function(lambda: self.fetches.in_use)

    def close(self) -> None:
        """Stop the fetch threads (the fetcher is its owner's to close)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def prepare_all(
        self,
        images: tuple[ImageInput, ...],
        plan: InputPlan,
        client: str = "",
        deadline: Deadline | None = None,
        recall: Recall | None = None,
    ) -> tuple[list[ItemResult], list[tuple[int, bytes]]]:
        """An item per image, and (index, payload) for each image ready to send; with `recall`,
        each item has its digest and the images it recalls get no payload."""
        urls = sum(1 for image in images if image.data is None)
        with self._fetch_slots(client, urls):
            outcomes = self._prepare_each(images, plan, deadline, recall)
        items: list[ItemResult] = []
        payloads: list[tuple[int, bytes]] = []
        for index, (item, payload) in enumerate(outcomes):
            items.append(item)
            if payload is not None:
                payloads.append((index, payload))
        return items, payloads

    @contextmanager
    def _fetch_slots(self, client: str, count: int) -> Iterator[None]:
        if not count:
            yield
            return
        with self.fetches.holding(client, count, _refusal_error):
            yield

    def _prepare_each(
        self,
        images: tuple[ImageInput, ...],
        plan: InputPlan,
        deadline: Deadline | None,
        recall: Recall | None,
    ) -> list[Outcome]:
        """URLs after the first go to pool threads (each holds a slot, so one is free for it);
        the first URL and the uploads are done on this thread meanwhile."""
        first_url = next((n for n, image in enumerate(images) if image.data is None), None)
        futures: dict[int, Future[Outcome]] = {}
        for n, image in enumerate(images):
            if image.data is None and n != first_url:
                # Each task runs in a copy of this request's context: logs keep its request id.
                run = contextvars.copy_context().run
                futures[n] = self._pool.submit(run, self._prepare, image, plan, deadline, recall)
        outcomes: dict[int, Outcome] = {
            n: self._prepare(image, plan, deadline, recall)
            for n, image in enumerate(images)
            if n not in futures
        }
        # Every fetch ends by its own budget (within the request's deadline): no timeout here.
        outcomes.update({n: future.result() for n, future in futures.items()})
        return [outcomes[n] for n in range(len(images))]

    def _prepare(
        self,
        image: ImageInput,
        plan: InputPlan,
        deadline: Deadline | None,
        recall: Recall | None = None,
    ) -> Outcome:
        item = ItemResult()
        try:
            if image.pixels:
                return item, checked_pixels(image.data or b"", plan)
            data = image.data
            if data is None:
                data = self._fetch(image.url or "", item, deadline)
            if recall is not None:
                item.digest = digest(data)
                if recall(item.digest):
                    return item, None
            checked = check_image(data, self.max_pixels, plan.tolerant)
            if plan.kind == "encoded":
                return item, encoded_for_graph(checked)
            return item, pixels_for_graph(checked, plan.height, plan.width)
        except GatewayError as exc:
            item.error = exc
            return item, None

    def _fetch(self, url: str, item: ItemResult, deadline: Deadline | None) -> bytes:
        start = time.perf_counter()
        outcome = "error"
        try:
            if deadline is not None:
                deadline.check("fetch")
            fetched = self.fetcher.fetch(url, deadline=deadline.at if deadline else None)
            outcome = "ok"
            if self.metrics is not None:
                self.metrics.fetch_bytes.observe(len(fetched.data))
            return fetched.data
        except DeadlineExceeded as exc:
            if self.metrics is not None and exc.stage is not None:
                self.metrics.deadline_misses.labels(exc.stage).inc()
            raise
        finally:
            elapsed = time.perf_counter() - start
            item.fetch_ms = elapsed * 1000
            if self.metrics is not None:
                self.metrics.fetch.labels(outcome).observe(elapsed)

    def _count_refusal(self, refusal: Refusal) -> None:
        if self.metrics is not None:
            self.metrics.refused(refusal.pool, refusal.reason)


def _refusal_error(refusal: Refusal) -> GatewayError:
    return refusal.as_error(FetchCapacity)


def checked_pixels(pixels: bytes, plan: InputPlan) -> bytes:
    """Float32 pixels given as such (the /v2 API): one image of the plan's size, else a 400."""
    expected = plan.height * plan.width * 3 * 4
    if plan.kind != "pixels" or len(pixels) != expected:
        raise BadRequest(
            f"pixels must be {plan.height}x{plan.width}x3 float32 values ({expected} bytes) "
            f"for this signature; got {len(pixels)} bytes",
            code="invalid_pixels",
        )
    return pixels


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
