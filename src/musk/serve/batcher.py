"""Requests from many clients grouped into model batches, on one worker thread, with a bounded queue.

A job is a list of items (images or texts) under a key (what to compute with which options), or one call to
run alone. The worker takes the oldest job, then every queued job with the same key, up to ``max_batch`` items,
waiting at most ``max_wait_s`` from the oldest job's arrival for more; it runs them as one batch and gives each
job its rows. A job that would take the queue past ``max_queue`` items is refused at once (:class:`QueueFull`); a job
cancelled while it waits leaves the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Batcher", "Closed", "QueueFull"]


class QueueFull(Exception):
    """The queue has no room for the job."""


class Closed(Exception):
    """The batcher is shutting down and takes no new jobs."""


@dataclass(eq=False)
class _Job:
    key: Hashable | None  # None: ``call`` runs alone
    items: Sequence
    call: Callable[[], Any] | None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.items) if self.call is None else 1


class Batcher:
    """``run_batch(key, items)`` returns one result row per item (anything sliceable of that length)."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, list], Sequence],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.01,
        max_queue: int = 256,
    ):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="musk-batcher", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        """Items waiting (a call counts as one)."""
        return self._queued

    def submit(self, key: Hashable, items: Sequence) -> Future:
        """A future of the job's rows, in the order of ``items``."""
        if not items:
            raise ValueError("a job needs at least one item")
        return self._put(_Job(key, list(items), None))

    def submit_call(self, call: Callable[[], Any]) -> Future:
        """A future of ``call()``, run on the worker between batches (so it has the model to itself)."""
        return self._put(_Job(None, (), call))

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, finish the queued ones (their clients are waiting), stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def _put(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise Closed("the service is shutting down")
            if self._queued + job.size > self.max_queue:
                raise QueueFull(f"the queue holds {self._queued} of at most {self.max_queue} items")
            self._jobs.append(job)
            self._queued += job.size
            self._cond.notify_all()
        job.future.add_done_callback(lambda future: self._forget(job) if future.cancelled() else None)
        return job.future

    def _forget(self, job: _Job) -> None:
        """A job cancelled while queued (its client gave up) leaves the queue and frees its room."""
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued -= job.size

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run([job for job in batch if job.future.set_running_or_notify_cancel()])

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs[0]
            if first.key is not None:
                deadline = first.arrived + self.max_wait_s
                while not self._closed and self._items_with(first.key) < self.max_batch:
                    if (left := deadline - time.monotonic()) <= 0:
                        break
                    self._cond.wait(left)
            batch = self._take(first)
            self._queued -= sum(job.size for job in batch)
            return batch

    def _items_with(self, key: Hashable) -> int:
        return sum(job.size for job in self._jobs if job.key == key)

    def _take(self, first: _Job) -> list[_Job]:
        """The first job and, for a keyed one, the following jobs of its key up to ``max_batch`` items."""
        if first.key is None:
            return [self._jobs.popleft()]
        batch, kept, items, full = [], deque(), 0, False
        while self._jobs:
            job = self._jobs.popleft()
            full = full or (bool(batch) and job.key == first.key and items + job.size > self.max_batch)
            if job.key == first.key and not full:  # in arrival order: a job that does not fit waits its turn
                batch.append(job)
                items += job.size
            else:
                kept.append(job)
        self._jobs = kept
        return batch

    def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            if jobs[0].call is not None:
                jobs[0].future.set_result(jobs[0].call())
                return
            rows = self.run_batch(jobs[0].key, [item for job in jobs for item in job.items])
            start = 0
            for job in jobs:
                job.future.set_result(rows[start : start + job.size])
                start += job.size
        except Exception as exc:  # noqa: BLE001 - the error belongs to the requests of this batch
            logger.debug("batch failed: %s", exc)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
