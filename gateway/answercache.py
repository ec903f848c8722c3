"""The answer cache: a model's full score row for image bytes it has classified, so the same
image again is answered without a Predict call or an admission slot.

Keyed by the SHA-256 of the image bytes, the model, the version that answered and the
signature; never by URL (what a URL serves can change). The whole row is kept and top-k is
applied on the way out, so `top_k` does not split entries. Bounded in bytes (an estimate per
entry that tests/gateway/test_answer_cache.py checks against tracemalloc), least recently used
first out. A version's entries are answered only while the version was seen served in the last
LIVENESS_TTL_S (a Predict it answered, or GetModelStatus listing it AVAILABLE); a version found
unloaded loses its entries at once. Thread-safe: waitress threads share one cache.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.client import PredictOutput
from gateway.interface import ItemResult
from gateway.metrics import Metrics
from gateway.topk import top_k

# How long a version seen served may answer from the cache before the model server is asked
# again (GetModelStatus: no model capacity); the same window as the resolver's alias TTL.
LIVENESS_TTL_S = 5.0
# A request confirms a version this long before its window ends, so one that passed the check
# still finds the version live when it looks its images up (else a few misses every window:
# 10 misses for 8 photos in the bench's cache step).
CHECK_AHEAD_S = 1.0
# Bytes of an OrderedDict slot (hash table entry and index, linked-list node, the table's
# spare room), measured on CPython 3.12 with tracemalloc at 1,000-22,000 entries: the estimate
# is 0-6 % over what is allocated, never under (test_the_estimate_is_honest checks it).
SLOT_BYTES = 176

# The response header saying whether the answer came from the cache: hit, miss or partial.
CACHE_HEADER = "Dynoserve-Cache"
SHARED_BYTES = 64  # a _Shared record (slots: three references)

Key = tuple[bytes, str, int, str]  # (sha256 of the image bytes, model, version, signature)


def digest(data: bytes) -> bytes:
    """What an image is known by in the cache: the SHA-256 of its bytes as received."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class Answer:
    """One image's whole score row (float32, as the model server sent it) and class names."""

    scores: array[float]
    classes: tuple[str, ...] | None  # shared between entries with the same names


@dataclass(slots=True)
class _Shared:
    names: tuple[str, ...]
    uses: int
    size: int


class AnswerCache:
    """LRU of Answers bounded in bytes; `limit_bytes` 0 turns it off (every call a no-op)."""

    def __init__(
        self,
        limit_bytes: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[Answer, int]] = OrderedDict()  # answer, its bytes
        self._names: dict[tuple[str, ...], _Shared] = {}  # one copy of each list of names
        self._per_version: dict[tuple[str, int], int] = {}  # entries per (model, version)
        self._seen: dict[tuple[str, int], float] = {}  # (model, version) -> last seen served
        self.bytes = 0
        if metrics is not None:
            metrics.answer_cache_bytes.set_function(lambda: self.bytes)
            metrics.answer_cache_entries.set_function(lambda: len(self._entries))

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def get(self, key: Key) -> Answer | None:
        """The answer for `key`, counted as a hit or a miss; None also when its version was not
        seen served within LIVENESS_TTL_S (the caller confirms it first: `needs_check`)."""
        if not self.enabled:
            return None
        with self._lock:
            found = self._entries.get(key) if self._live(key[1], key[2]) else None
            if found is not None:
                self._entries.move_to_end(key)
        if self.metrics is not None:
            (self.metrics.answer_cache_hits if found else self.metrics.answer_cache_misses).inc()
        return found[0] if found else None

    def put(self, key: Key, scores: Sequence[float], classes: Sequence[str] | None) -> None:
        """Keep a row the model just answered (its version is thereby seen served)."""
        if not self.enabled:
            return
        row = array("f", scores)
        with self._lock:
            self._seen[(key[1], key[2])] = self.clock()
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            names = self._share(tuple(classes)) if classes is not None else None
            answer = Answer(row, names)
            size = entry_bytes(key, answer)
            if size > self.limit_bytes:
                self._unshare(names)
                return
            self._entries[key] = (answer, size)
            self.bytes += size
            version = (key[1], key[2])
            self._per_version[version] = self._per_version.get(version, 0) + 1
            evicted = 0
            while self.bytes > self.limit_bytes and self._entries:
                self._remove(next(iter(self._entries)))
                evicted += 1
        self._count_evictions("size", evicted)

    def needs_check(self, model: str, version: int) -> bool:
        """Whether entries of this version exist but it was not seen served lately."""
        if not self.enabled:
            return False
        with self._lock:
            if (model, version) not in self._per_version:
                return False
            return not self._live(model, version, ahead_s=CHECK_AHEAD_S)

    def served(self, model: str, available: Iterable[int]) -> None:
        """GetModelStatus listed these versions of `model` AVAILABLE: they may answer from the
        cache again; the model's other versions are gone, and their entries with them."""
        now, keep = self.clock(), set(available)
        with self._lock:
            for version in keep:
                self._seen[(model, version)] = now
            gone = [v for m, v in self._per_version if m == model and v not in keep]
        for version in gone:
            self.drop_version(model, version)

    def drop_version(self, model: str, version: int) -> None:
        """The version was unloaded: none of its entries may answer again."""
        with self._lock:
            self._seen.pop((model, version), None)
            if (model, version) not in self._per_version:
                return
            doomed = [k for k in self._entries if k[1] == model and k[2] == version]
            for key in doomed:
                self._remove(key)
        self._count_evictions("unloaded", len(doomed))

    def _live(self, model: str, version: int, ahead_s: float = 0.0) -> bool:
        seen = self._seen.get((model, version))
        return seen is not None and self.clock() - seen < LIVENESS_TTL_S - ahead_s

    def _remove(self, key: Key) -> None:
        """Take out an entry (caller holds the lock)."""
        answer, size = self._entries.pop(key)
        self.bytes -= size
        self._unshare(answer.classes)
        version = (key[1], key[2])
        left = self._per_version[version] - 1
        if left:
            self._per_version[version] = left
        else:
            del self._per_version[version]

    def _share(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """One copy of each list of class names, counted once (a 1,000-class model's names
        take ~60 KB: per entry they would be most of the cache)."""
        shared = self._names.get(names)
        if shared is None:
            shared = self._names[names] = _Shared(names, 0, names_bytes(names))
            self.bytes += shared.size
        shared.uses += 1
        return shared.names

    def _unshare(self, names: tuple[str, ...] | None) -> None:
        if names is None:
            return
        shared = self._names[names]
        shared.uses -= 1
        if not shared.uses:
            del self._names[names]
            self.bytes -= shared.size

    def _count_evictions(self, reason: str, count: int) -> None:
        if count and self.metrics is not None:
            self.metrics.answer_cache_evictions.labels(reason).inc(count)


def entry_bytes(key: Key, answer: Answer) -> int:
    """An entry's memory: its key's objects, the answer and its row, and the dict slot. The
    model name is the request's own string (kept by the key); the signature name is the
    settings' one, shared by every entry (not counted)."""
    digest_, model, version, _signature = key
    parts = (key, digest_, model, version, answer, answer.scores)
    return sum(sys.getsizeof(p) for p in parts) + SLOT_BYTES


def names_bytes(names: tuple[str, ...]) -> int:
    """A shared list of class names: the tuple, its strings, its record and table slot."""
    strings = sum(sys.getsizeof(n) for n in names)
    return sys.getsizeof(names) + strings + SHARED_BYTES + SLOT_BYTES


class Recall:
    """One request's use of the cache: called with each image's digest (from fetch threads
    too), says whether its answer is known; then `fill` ranks the known ones and `keep` stores
    what the model answered for the rest."""

    def __init__(self, cache: AnswerCache, model: str, version: int, signature: str) -> None:
        self.cache = cache
        self.model = model
        self.version = version
        self.signature = signature
        self.found: dict[bytes, Answer] = {}

    def __call__(self, image: bytes) -> bool:
        answer = self.cache.get((image, self.model, self.version, self.signature))
        if answer is not None:
            self.found[image] = answer
        return answer is not None

    def fill(self, items: Sequence[ItemResult], payloads: Sequence[int], k: int) -> None:
        """Give each recalled item (no error, not among `payloads`' indices) its top k."""
        sent = set(payloads)
        for index, item in enumerate(items):
            answer = self.found.get(item.digest or b"")
            if answer is not None and item.error is None and index not in sent:
                item.predictions = top_k(answer.scores.tolist(), answer.classes, k)
                item.cached = True

    def keep(
        self, items: Sequence[ItemResult], indices: Sequence[int], output: PredictOutput
    ) -> None:
        """Store row n of `output` for items[indices[n]], under the version that answered; never
        a row of an image the model server could not decode (its scores are meaningless)."""
        version = output.version or self.version
        for row, index in enumerate(indices):
            image = items[index].digest
            failed = output.decoded is not None and not output.decoded[row]
            if image is not None and row < len(output.scores) and not failed:
                classes = output.classes[row] if output.classes else None
                key = (image, self.model, version, self.signature)
                self.cache.put(key, output.scores[row], classes)

    @property
    def any_found(self) -> bool:
        return bool(self.found)


def cache_state(items: Sequence[ItemResult]) -> str:
    """The Dynoserve-Cache header of an answer: hit (every image answered came from the cache),
    miss (none did), partial (a batch of both); "" when no image was answered."""
    answered = [item.cached for item in items if item.predictions is not None]
    if not answered:
        return ""
    if all(answered):
        return "hit"
    return "partial" if any(answered) else "miss"
