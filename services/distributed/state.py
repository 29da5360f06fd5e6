"""The distributed mode's shared state, all in one Redis: jobs, garments, API keys, webhooks, timings.

The gateway replicas and every worker process build it from the same settings. Production Redis
needs AOF persistence (`appendonly yes`, `appendfsync everysec` or `always`) and
`maxmemory-policy noeviction`: an evicted key would be a lost job or a lost queue message.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from services.common.config import Settings
from services.distributed.queues import QUEUES
from services.gateway.fetch import SafeFetcher, UrlPolicy
from services.gateway.jobs import Job
from services.gateway.metrics import Metrics
from services.gateway.redis_persons import RedisBatchStore, RedisPersonRegistry
from services.gateway.redis_state import (
    RedisGarmentRegistry,
    RedisJobStore,
    RedisKeyStore,
    connect,
    unavailable_as_queue_error,
)
from services.gateway.redis_webhooks import RedisWebhookOutbox
from services.pipeline import PersonLock

log = logging.getLogger("fitroom.distributed")

# Timings are for measurement (bench/distributed.py), not state: they expire on their own.
TIMING_TTL_S = 24 * 3600


class StageTiming:
    """When each stage of a job started and finished, in a Redis hash per job.

    What a stage waited in its queue is its start minus the previous stage's finish (the job's
    creation for the first); what it worked is its finish minus its start.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def started(self, job_id: str, stage: str) -> None:
        self._set(job_id, f"{stage}.started")

    def finished(self, job_id: str, stage: str) -> None:
        self._set(job_id, f"{stage}.finished")

    def waited(self, job: Job, stage: str) -> float:
        """Seconds from the previous stage's finish (the job's creation for the first) until now."""
        index = QUEUES.index(stage)
        previous = self.of(job.id).get(f"{QUEUES[index - 1]}.finished") if index > 0 else None
        return max(0.0, time.time() - (previous or job.created_at))

    @unavailable_as_queue_error
    def of(self, job_id: str) -> dict[str, float]:
        return {name: float(value) for name, value in self.client.hgetall(_timing_key(job_id)).items()}

    @unavailable_as_queue_error
    def _set(self, job_id: str, field: str) -> None:
        key = _timing_key(job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, field, repr(time.time()))
            pipe.expire(key, TIMING_TTL_S)
            pipe.execute()


def _timing_key(job_id: str) -> str:
    return f"fitroom:timing:{job_id}"


@dataclass
class DistributedState:
    client: redis.Redis
    jobs: RedisJobStore
    garments: RedisGarmentRegistry
    keys: RedisKeyStore
    outbox: RedisWebhookOutbox
    timing: StageTiming
    persons: RedisPersonRegistry
    batches: RedisBatchStore

    def person_lock(self, scope: str, hold_s: float) -> PersonLock:
        """The pipeline's person lock across every worker process: jobs of one shopper taken by several
        pose (or parser) workers at once compute the pose once, the others wait and find it stored.
        Best effort: the work is idempotent, so a lock that cannot be had within `hold_s` (a slow
        holder, or one that died holding it: the lock expires after `hold_s`) or a Redis blip only costs
        a duplicate computation, never a failed job."""

        def lock(key: str) -> AbstractContextManager[object]:
            return _best_effort(self.client.lock(f"fitroom:lock:{scope}{key}", timeout=hold_s, blocking_timeout=hold_s))

        return lock


@contextlib.contextmanager
def _best_effort(lock: redis.lock.Lock) -> Iterator[None]:
    try:
        held = lock.acquire()
    except redis.RedisError as exc:
        log.warning("person lock unavailable (%s): computing without it", exc)
        held = False
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(redis.RedisError):
                lock.release()


def distributed_state(
    settings: Settings, metrics: Metrics | None = None, fetcher: SafeFetcher | None = None
) -> DistributedState:
    """The stores over one Redis connection pool. The outbox's dispatcher is not started here: gateway
    replicas start theirs (with their fetcher and metrics); a worker only adds deliveries."""
    client = connect(settings.redis_url)
    keys = RedisKeyStore(client)
    fetcher = fetcher or SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), settings.webhook_timeout_s, 0)
    return DistributedState(
        client=client,
        jobs=RedisJobStore(client),
        garments=RedisGarmentRegistry(client),
        keys=keys,
        outbox=RedisWebhookOutbox(client, keys, fetcher, settings, metrics or Metrics()),
        timing=StageTiming(client),
        persons=RedisPersonRegistry(client),
        batches=RedisBatchStore(client),
    )
