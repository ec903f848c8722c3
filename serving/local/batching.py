"""Server-side batching: concurrent Predict calls on one signature run as one padded batch.

Mirrors TF Serving's BatchingSession over a BasicBatchScheduler: tasks queue up; a batch thread
takes queued tasks up to max_batch_size as soon as the batch is full or the oldest task has
waited batch_timeout_micros, pads to the next allowed_batch_sizes entry, runs once and splits.
With enable_large_batch_splitting, max_batch_size bounds a request and max_execution_batch_size
a batch: a request that does not fit the batch being formed fills it and its other rows go on
in the next batches (the queue's split_input_task_func), answered once every piece has run.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.local.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)

log = logging.getLogger("serving.batching")

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Arrays]
BatchObserver = Callable[[int, int], None]  # (input size, padded size)


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults for the fields a file leaves unset."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    thread_pool_name: str = "batch_threads"
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    """The largest batch run when splitting; max_batch_size when unset (GetQueueOptions)."""

    @classmethod
    def from_proto(cls, proto: Any | None) -> BatchingOptions:
        """Options from a BatchingParameters message; ValueError as TF Serving rejects it."""
        if proto is None:
            return cls()
        values: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        if proto.HasField("num_batch_threads"):
            values["num_batch_threads"] = proto.num_batch_threads.value
        if proto.HasField("thread_pool_name"):
            values["thread_pool_name"] = proto.thread_pool_name.value
        if proto.HasField("enable_large_batch_splitting"):
            values["enable_large_batch_splitting"] = proto.enable_large_batch_splitting.value
        if proto.HasField("max_execution_batch_size"):  # read only when splitting
            values["max_execution_batch_size"] = proto.max_execution_batch_size.value
        values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
        options = cls(**values)
        options.validate()
        return options

    @property
    def execution_batch_size(self) -> int:
        """The largest batch the model runs: max_execution_batch_size when splitting."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    def validate(self) -> None:
        """As CreateBasicBatchingSession and the queue check the options (batching_session.cc)."""
        sizes = self.allowed_batch_sizes
        if self.max_batch_size <= 0 or self.num_batch_threads <= 0:
            raise ValueError("max_batch_size and num_batch_threads must be positive")
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
        if not self.enable_large_batch_splitting:
            if sizes and sizes[-1] != self.max_batch_size:
                raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size")
            return
        execution = self.execution_batch_size
        if not 0 < execution <= self.max_batch_size:
            raise ValueError(
                f"max_execution_batch_size ({execution}) must be positive and at most "
                f"max_batch_size ({self.max_batch_size})"
            )
        if sizes and sizes[-1] > self.max_batch_size:
            raise ValueError(
                "Last entry in allowed_batch_sizes must be less than or equal to max_batch_size; "
                f"last entry was {sizes[-1]}; expected {self.max_batch_size}"
            )
        if sizes and sizes[-1] != execution:
            raise ValueError(
                "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size; "
                f"last entry was {sizes[-1]}; expected {execution}"
            )

    def padded_size(self, size: int) -> int:
        if not self.allowed_batch_sizes:
            return size
        return self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, size)]


@dataclass
class _Task:
    inputs: Arrays
    size: int
    enqueued_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: ServingError | None = None
    abandoned: bool = False
    whole: _Task | None = None
    """The request this task is a piece of (large-batch splitting); None for a whole request."""
    offset: int = 0
    """Where this piece's rows start in its request."""
    pending: int = 0
    """On a split request: rows whose piece has not answered yet."""
    answers: list[tuple[int, _Task]] = field(default_factory=list)
    """On a split request: its pieces once they answered, with their offsets."""

    def split_off(self, rows: int) -> tuple[_Task, _Task]:
        """(the first `rows` rows, the rest) as pieces of this task's request."""
        whole = self.whole or self
        if self.whole is None:
            whole.pending = self.size
        pieces = []
        for start, end in ((0, rows), (rows, self.size)):
            inputs = {key: array[start:end] for key, array in self.inputs.items()}
            piece = _Task(inputs, end - start, self.enqueued_at, whole=whole)
            piece.offset = self.offset + start
            pieces.append(piece)
        return pieces[0], pieces[1]

    @property
    def gone(self) -> bool:
        """Its caller stopped waiting (deadline): not worth running."""
        return self.abandoned or (self.whole is not None and self.whole.abandoned)


def task_size(inputs: Arrays) -> int:
    """The shared 0th dimension of the inputs, checked as BatchingSession checks it."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class BatchScheduler:
    """One queue and its batch threads, for one (servable, signature, outputs) combination."""

    def __init__(
        self, options: BatchingOptions, run: RunBatch, observe: BatchObserver, name: str
    ) -> None:
        self.options = options
        self._run = run
        self._observe = observe
        self._tasks: deque[_Task] = deque()
        self._queued = 0
        self._running = 0  # batches being run, by batch threads or inline by callers
        self._cond = threading.Condition()
        self._pieces = threading.Lock()  # split requests' answers, from any batch thread
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Arrays, timeout: float | None) -> Arrays:
        """Queue one request and wait for its slice of a batch's outputs."""
        task = _Task(inputs, task_size(inputs))
        if task.size > self.options.max_batch_size:
            raise InvalidArgument(
                f"Task size {task.size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        limit = self.options.execution_batch_size
        with self._cond:
            if self._closed:
                raise Unavailable("The batch scheduler is shutting down")
            batches = math.ceil((self._queued + task.size) / limit)
            if batches > self.options.max_enqueued_batches:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full"
                )
            self._tasks.append(task)
            self._queued += task.size
            inline = self._take_inline(limit)
            if inline is None:
                self._cond.notify()
        if inline is not None:
            self._run_inline(inline)
        return self._await(task, timeout)

    def _take_inline(self, limit: int) -> list[_Task] | None:
        """With no batch timeout and a batch thread's turn free, the caller runs the batch
        itself (caller holds the lock): what the batch thread would take now, minus the two
        thread hand-offs (~0.3 ms of CPU and a scheduler wake-up each way on a busy machine).
        num_batch_threads still bounds the batches that run at once."""
        if self.options.batch_timeout_micros or self._running >= self.options.num_batch_threads:
            return None
        self._running += 1
        return self._take(limit)

    def _run_inline(self, batch: list[_Task]) -> None:
        try:
            self._process(batch)
        finally:
            self._finished()

    def _finished(self) -> None:
        """A batch ended: its turn goes to a batch thread if anything is queued."""
        with self._cond:
            self._running -= 1
            if self._tasks:
                self._cond.notify()

    @property
    def queued(self) -> int:
        """Examples queued and not yet taken into a batch (what the full-queue check counts)."""
        with self._cond:
            return self._queued

    def _await(self, task: _Task, timeout: float | None) -> Arrays:
        if not task.done.wait(timeout):
            task.abandoned = True
            raise DeadlineExceeded("Deadline Exceeded")
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def close(self) -> None:
        """Finish queued work, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._process(batch)
            finally:
                self._finished()

    def _next_batch(self) -> list[_Task] | None:
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.execution_batch_size
        threads = self.options.num_batch_threads
        with self._cond:
            while not self._closed and (not self._tasks or self._running >= threads):
                self._cond.wait()
            if not self._tasks:
                return None
            while self._queued < limit and not self._closed:
                remaining = self._tasks[0].enqueued_at + timeout - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._running += 1
            return self._take(limit)

    def _take(self, limit: int) -> list[_Task]:
        batch: list[_Task] = []
        size = 0
        while self._tasks:
            task = self._tasks[0]
            room = limit - size
            if task.size > room:
                if not self.options.enable_large_batch_splitting or room == 0:
                    break
                # The request fills this batch; its other rows wait at the head of the queue.
                task, self._tasks[0] = task.split_off(room)
            else:
                self._tasks.popleft()
            self._queued -= task.size
            if task.gone:
                continue
            batch.append(task)
            size += task.size
        return batch

    def _process(self, batch: list[_Task]) -> None:
        if not batch:
            return
        try:
            self._run_batch(batch)
        except ServingError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # One bad request must not fail the others that shared its batch (stock TF
                # Serving fails them all): each runs again on its own and gets its own answer.
                for task in batch:
                    self._run_alone(task)
        except Exception as exc:  # a batch thread must never die
            log.exception("batch failed")
            for task in batch:
                task.error = Internal(f"Batch failed: {exc}")
        finally:
            for task in batch:
                if task.whole is None:
                    task.done.set()
                else:
                    self._piece_answered(task)

    def _piece_answered(self, piece: _Task) -> None:
        """A split request answers when its last piece has: its rows in order, or the first
        error any piece met (BatchingSession's shared status for split tasks)."""
        whole = piece.whole
        assert whole is not None
        with self._pieces:
            whole.answers.append((piece.offset, piece))
            whole.pending -= piece.size
            if whole.pending:
                return
        pieces = [p for _, p in sorted(whole.answers, key=lambda answer: answer[0])]
        whole.error = next((p.error for p in pieces if p.error is not None), None)
        if whole.error is None:
            outputs = [p.outputs for p in pieces if p.outputs is not None]
            whole.outputs = {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}
        whole.done.set()

    def _run_batch(self, batch: list[_Task]) -> None:
        merged, size, padded = self._merge(batch)
        outputs = self._run(merged)
        self._observe(size, padded)
        self._split(batch, outputs, padded)

    def _run_alone(self, task: _Task) -> None:
        try:
            self._run_batch([task])
        except ServingError as exc:
            task.error = exc
        except Exception as exc:
            log.exception("batch of one failed")
            task.error = Internal(f"Batch failed: {exc}")

    def _merge(self, batch: list[_Task]) -> tuple[Arrays, int, int]:
        size = sum(task.size for task in batch)
        # A batch of empty requests stays empty: there is no row to pad with.
        padded = self.options.padded_size(size) if size else 0
        merged: Arrays = {}
        for key in batch[0].inputs:
            parts = [task.inputs[key] for task in batch]
            if len(parts) == 1 and padded == size:
                merged[key] = parts[0]  # a lone task: nothing to join, no copy
                continue
            if padded > size:
                # BatchingSession pads with copies of the first row of the batch.
                first = next(part for part in parts if len(part))
                parts.append(np.repeat(first[:1], padded - size, axis=0))
            try:
                merged[key] = np.concatenate(parts, axis=0)
            except ValueError as exc:
                raise InvalidArgument(
                    "Tensors with name '"
                    + key
                    + "' from different tasks have different shapes and padding is turned off."
                    " Set pad_variable_length_inputs to true, or ensure that all tensors with "
                    "the same name have equal dimensions starting with the first dim."
                ) from exc
        return merged, size, padded

    def _split(self, batch: list[_Task], outputs: Arrays, padded: int) -> None:
        for key, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != padded:
                raise Internal(
                    f"Batched output tensor's 0th dimension does not equal the sum of the "
                    f"0th dimension sizes of the input tensors (output {key})"
                )
        offset = 0
        for task in batch:
            end = offset + task.size
            task.outputs = {key: array[offset:end] for key, array in outputs.items()}
            offset = end
