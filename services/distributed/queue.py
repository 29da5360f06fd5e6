"""The gateway's side of distributed mode: the JobQueue that sends a job's first stage task, and the
reaper: it sends again the next task of a job silent too long, and fails a job past its deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import redis

from services.common.artifacts import ArtifactStore
from services.common.config import Settings
from services.common.errors import JobTimeout, QueueFull, QueueUnavailable
from services.distributed.app import send_stage
from services.distributed.queues import QUEUES
from services.distributed.state import DistributedState
from services.gateway.jobs import Job
from services.gateway.storage import TenantArtifactStore
from services.gateway.worker import conclude, job_ended_in_batch, job_webhook

log = logging.getLogger("fitroom.distributed")


class CeleryQueue:
    """JobQueue over Celery: `submit` sends the job's first stage task (each task sends the next);
    the workers are other processes.

    The bound is on tasks waiting in all stage queues together (Redis list lengths), so a
    backlog anywhere in the pipeline pushes back on new submissions.
    """

    def __init__(self, client: redis.Redis, max_depth: int) -> None:
        self.client = client
        self.max_depth = max_depth

    def submit(self, job_id: str) -> None:
        if self.full():
            raise QueueFull(f"{self.max_depth} tasks are waiting for workers; retry later")
        send_stage(QUEUES[0], job_id)

    def submit_many(self, job_ids: Sequence[str]) -> None:
        """A batch's jobs: each sends its first stage task; the stage workers share them out."""
        if self.full():
            raise QueueFull(f"{self.max_depth} tasks are waiting for workers; retry later")
        for job_id in job_ids:
            send_stage(QUEUES[0], job_id)

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


def next_stage(job: Job) -> str:
    """The first stage, in the order a job visits them, that has not produced its result yet."""
    done = ("done", "cached")
    return next((stage for stage in QUEUES if job.stages[stage].status not in done), QUEUES[-1])


def resend_stalled(state: DistributedState, settings: Settings) -> int:
    """Send again the next task of every job silent for `settings.stall_timeout_s` whose stage queue is
    empty; returns how many.

    The broker can lose a message: Redis pops it for a worker, which dies before recording it as
    unacknowledged (kombu does the two in separate steps), or a Redis that fsyncs every second
    crashes. A lost message leaves its job waiting forever. A job is silent past the stall timeout
    only if no task started it since: a dead worker's message comes back within the visibility
    timeout and a task runs at most the time limit. One waiting in a long queue is silent too, so
    a job is sent again only when its stage's queue is empty: its message is not waiting there.
    Tasks are idempotent and one that finds the job moved on does nothing, so a message that was
    not lost after all costs a duplicate that does nothing. Claiming marks the job alive, so it is
    looked at again once per stall timeout, by one reaper however many gateway replicas run one."""
    sent = 0
    for job in state.jobs.claim_stalled(time.time() - settings.stall_timeout_s):
        stage = next_stage(job)
        if state.client.llen(stage) > 0:
            continue  # a backlog: its message may be waiting in it
        log.warning("job %s silent for %.0f s: sending its %s task again", job.id, settings.stall_timeout_s, stage)
        send_stage(stage, job.id)
        sent += 1
    return sent


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
            outcome = state.jobs.finish(
                job.id, "failed", error=(error.code, error.message), webhook=job_webhook(settings)
            )
            if outcome is not None:
                log.warning("job %s reaped after %.0f s (%s)", job.id, time.time() - job.created_at, job.status)
                store = TenantArtifactStore(artifacts, job.tenant)
                conclude(job, outcome, state.jobs, store, state.outbox)
                job_ended_in_batch(outcome, state.batches, state.jobs, store, state.outbox, settings)
                reaped += 1
        if reaped == before:  # every one was finished meanwhile by someone else: the next read differs
            break
    return reaped
