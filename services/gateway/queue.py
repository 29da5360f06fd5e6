"""The job queue: where accepted jobs wait for a worker.

`JobQueue` is the seam for the distributed mode (issue 7: a Celery chain over Redis). Embedded
mode uses `ThreadQueue`: N worker threads in the gateway's own process. The queue holds only job
ids; the job store is the truth, so the queue can be rebuilt from it after a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from services.common.errors import QueueFull

log = logging.getLogger("fitroom.gateway.queue")


class JobQueue(Protocol):
    def submit(self, job_id: str) -> None:
        """Queue a new job; QueueFull when `max_depth` jobs are already waiting."""
        ...

    def submit_many(self, job_ids: Sequence[str]) -> None:
        """Queue a batch's jobs: QueueFull only when the queue is full already. A batch (up to 100 jobs)
        may take the queue past its bound: the bound is back-pressure on new requests, and a batch
        half queued would be worse than a long queue."""
        ...

    def restore(self, job_ids: Iterable[str]) -> None:
        """Queue jobs recovered from the job store at start, regardless of the bound (they were accepted)."""
        ...

    def full(self) -> bool: ...

    def depth(self) -> int:
        """Jobs waiting for a worker (not those running)."""
        ...

    def healthy(self) -> bool:
        """Every worker is alive."""
        ...

    def start(self) -> None: ...

    def stop(self, grace_s: float) -> None:
        """Stop taking jobs; wait up to grace_s for running ones (the rest stay in the store, re-queued at start)."""
        ...


class ThreadQueue:
    """Worker threads behind a bounded in-memory queue; `run(job_id)` executes one job."""

    def __init__(self, run: Callable[[str], None], workers: int, max_depth: int) -> None:
        self.run = run
        self.workers = workers
        self.max_depth = max_depth
        self.stopping = threading.Event()  # the executor checks it between stages
        # Unbounded underneath: the bound applies to new submissions only (see restore).
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, job_id: str) -> None:
        with self._lock:
            if self.stopping.is_set():
                raise QueueFull("the server is shutting down")
            if self._queue.qsize() >= self.max_depth:
                raise QueueFull(f"all workers are busy and {self.max_depth} jobs are waiting; retry later")
            self._queue.put(job_id)

    def submit_many(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            if self.stopping.is_set():
                raise QueueFull("the server is shutting down")
            if self._queue.qsize() >= self.max_depth:
                raise QueueFull(f"all workers are busy and {self.max_depth} jobs are waiting; retry later")
            for job_id in job_ids:
                self._queue.put(job_id)

    def restore(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._queue.put(job_id)

    def full(self) -> bool:
        return self._queue.qsize() >= self.max_depth

    def depth(self) -> int:
        return self._queue.qsize()

    def healthy(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        for n in range(self.workers):
            # Daemon threads: a job still running when the grace period ends must not hold the
            # process; the job store still says "running" and the next start re-queues it.
            thread = threading.Thread(target=self._work, name=f"fitroom-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace_s: float) -> None:
        self.stopping.set()
        for _ in self._threads:
            self._queue.put(None)  # wakes an idle worker so it sees `stopping`
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self.stopping.is_set():
                return  # a job id left unread stays queued in the store
            try:
                self.run(job_id)
            except Exception:  # the executor handles job failures; this is a bug in it, keep serving
                log.exception("worker error on job %s", job_id)
