"""The gateway's side of distributed mode: the JobQueue that sends Celery chains, and the reaper."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from kombu.exceptions import OperationalError

from services.common.artifacts import ArtifactStore
from services.common.config import Settings
from services.common.errors import JobTimeout, QueueFull, QueueUnavailable
from services.distributed.queues import QUEUES
from services.distributed.state import DistributedState
from services.gateway.storage import TenantArtifactStore
from services.gateway.worker import conclude

log = logging.getLogger("fitroom.distributed")


class CeleryQueue:
    """JobQueue over Celery: `submit` sends the job's chain; the workers are other processes.

    The bound is on tasks waiting in all stage queues together (Redis list lengths), so a
    backlog anywhere in the pipeline pushes back on new submissions.
    """

    def __init__(self, client: redis.Redis, max_depth: int) -> None:
        self.client = client
        self.max_depth = max_depth

    def submit(self, job_id: str) -> None:
        from services.distributed.tasks import job_chain  # imports the stages: only when a job is sent

        if self.full():
            raise QueueFull(f"{self.max_depth} tasks are waiting for workers; retry later")
        try:
            job_chain(job_id).apply_async(retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        except OperationalError as exc:
            raise QueueUnavailable(f"the job queue (Redis) is unreachable: {exc}") from exc

    def restore(self, job_ids: Iterable[str]) -> None:
        """Nothing to do: the broker keeps queued messages across gateway restarts."""

    def full(self) -> bool:
        return self.depth() >= self.max_depth

    def depth(self) -> int:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    pipe.llen(queue)
                return sum(pipe.execute())
        except redis.RedisError as exc:
            raise QueueUnavailable(f"the job queue (Redis) is unreachable: {exc}") from exc

    def healthy(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        pass

    def stop(self, grace_s: float) -> None:
        pass


def reap_overdue(state: DistributedState, artifacts: ArtifactStore, settings: Settings) -> int:
    """Fail every job unfinished past its deadline (a lost message, a crashed gateway between
    accepting a job and queueing it); returns how many. Safe to run in every gateway replica:
    finishing is first-writer-wins, so a job is reaped once, and a late worker cannot undo it."""
    reaped = 0
    cutoff = time.time() - settings.job_deadline_s
    while overdue := state.jobs.unfinished_before(cutoff):
        before = reaped
        for job in overdue:
            error = JobTimeout(f"the job did not finish within {settings.job_deadline_s:g} s")
            outcome = state.jobs.finish(job.id, "failed", error=(error.code, error.message))
            if outcome is not None:
                log.warning("job %s reaped after %.0f s (%s)", job.id, time.time() - job.created_at, job.status)
                conclude(job, outcome, state.jobs, TenantArtifactStore(artifacts, job.tenant), state.outbox, settings)
                reaped += 1
        if reaped == before:  # every one was finished meanwhile by someone else: the next read differs
            break
    return reaped
