"""One forward pass at a time per device, behind a bounded queue.

A model on one device gains nothing from running two forwards at once (they compete for the same
cores or GPU and both get slower) and may run out of memory, so every job that touches the model goes
through a single worker thread. Requests beyond ``max_queue`` waiting ones are refused at once with
:class:`QueueFull` (the app answers ``503`` with ``Retry-After``) rather than piling up until every
client times out.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(RuntimeError):
    """The model queue is full; ``retry_after`` is a hint in whole seconds."""

    def __init__(self, retry_after: int, reason: str = "the model is busy: too many queued requests") -> None:
        super().__init__(f"{reason}, retry in about {retry_after} s")
        self.retry_after = retry_after


class QueueTimeout(TimeoutError):
    """A job did not finish within the request timeout."""


class ModelQueue:
    """Serialises model jobs on one worker thread; bounded; measures how long jobs take."""

    def __init__(self, max_queue: int, timeout_s: float) -> None:
        self.capacity = max_queue + 1  # the running job plus those allowed to wait
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segearth-model")
        self._lock = threading.Lock()
        self._outstanding = 0
        self._mean_s = 1.0  # running mean of job time, for Retry-After; 1 s until measured
        self.completed = 0

    @property
    def outstanding(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return self._outstanding

    def retry_after(self) -> int:
        """Seconds until the queue has probably drained (at least 1)."""
        with self._lock:
            return max(1, math.ceil(self._mean_s * self._outstanding))

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue ``job`` or raise :class:`QueueFull` immediately."""
        with self._lock:
            if self._outstanding >= self.capacity:
                raise QueueFull(max(1, math.ceil(self._mean_s * self._outstanding)))
            self._outstanding += 1
        try:
            return self._pool.submit(self._timed, job)
        except RuntimeError:  # pool shut down: the server is stopping
            self._release(None)
            raise

    def _timed(self, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            self._release(time.perf_counter() - start)

    def _release(self, seconds: float | None) -> None:
        with self._lock:
            self._outstanding -= 1
            if seconds is not None:
                self.completed += 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * seconds if self.completed > 1 else seconds

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the model thread and await it, within the request timeout."""
        future = self.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            # A job still waiting is dropped (its slot is freed by cancel); a running forward cannot
            # be interrupted safely, so it finishes and its result is discarded.
            if future.cancel():
                self._release(None)
            raise QueueTimeout(f"no answer within the request timeout of {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
