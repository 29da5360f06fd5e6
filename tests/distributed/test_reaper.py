"""The reaper: jobs stuck past FITROOM_JOB_DEADLINE_S (a lost message, a gateway that died between
accepting a job and queueing it) fail with job_timeout, once, and a late worker cannot undo it.
Against a real redis-server; the artifacts on local disk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.artifacts import LocalArtifactStore
from services.common.config import Settings
from services.distributed.queue import reap_overdue
from services.distributed.state import DistributedState, distributed_state
from services.gateway.jobs import Job, new_job_id
from services.gateway.storage import TenantArtifactStore, person_input_key
from tests.redis_server import redis_server

DEADLINE_S = 60.0


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[DistributedState, Settings]]:
    with redis_server(tmp_path / "redis") as redis:
        settings = Settings(mode="distributed", redis_url=redis.url, job_deadline_s=DEADLINE_S, data_dir=tmp_path)
        yield distributed_state(settings), settings


def make_job(state: DistributedState, age_s: float) -> Job:
    job = Job(
        id=new_job_id(),
        tenant="acme",
        category="auto",
        output_format="jpeg",
        person_prefix="person/0123/",
        base_url="http://gateway.test",
        callback_url="https://shop.example/hooks/tryon",
        created_at=time.time() - age_s,
    )
    return state.jobs.create(job, idempotency_ttl_s=3600)


def test_overdue_jobs_fail_with_job_timeout_once(state: tuple[DistributedState, Settings], tmp_path: Path) -> None:
    distributed, settings = state
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    store = TenantArtifactStore(artifacts, "acme")
    stuck_queued = make_job(distributed, age_s=DEADLINE_S + 5)
    stuck_running = make_job(distributed, age_s=DEADLINE_S + 30)
    assert distributed.jobs.start(stuck_running.id) is not None
    fresh = make_job(distributed, age_s=1)
    store.put(person_input_key(stuck_queued.id), b"photo")

    assert reap_overdue(distributed, artifacts, settings) == 2
    for job in (stuck_queued, stuck_running):
        reaped = distributed.jobs.get("acme", job.id)
        assert reaped is not None and reaped.status == "failed" and reaped.error_code == "job_timeout", reaped
        assert f"{DEADLINE_S:g} s" in (reaped.error_message or "")
        delivery = distributed.outbox.state(job.id)  # the retailer hears of it like of any failure
        assert delivery is not None and delivery.status == "pending"
    assert not store.exists(person_input_key(stuck_queued.id))  # the photo is not kept for a dead job
    fresh_now = distributed.jobs.get("acme", fresh.id)
    assert fresh_now is not None and fresh_now.status == "queued"

    assert reap_overdue(distributed, artifacts, settings) == 0  # once


def test_a_late_worker_cannot_undo_the_reaper(state: tuple[DistributedState, Settings], tmp_path: Path) -> None:
    distributed, settings = state
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    job = make_job(distributed, age_s=DEADLINE_S + 1)
    assert distributed.jobs.start(job.id) is not None
    assert reap_overdue(distributed, artifacts, settings) == 1
    # The worker that was slow all along finishes now: first writer wins, and the task stops.
    assert distributed.jobs.finish(job.id, "succeeded", detected_category="upper") is None
    assert distributed.jobs.start(job.id) is None
    final = distributed.jobs.get("acme", job.id)
    assert final is not None and final.status == "failed" and final.error_code == "job_timeout"
