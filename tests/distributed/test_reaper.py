"""The reaper: a job silent too long has its next task sent again (its message was lost), once per
silence; jobs stuck past FITROOM_JOB_DEADLINE_S (a gateway that died between accepting a job and
queueing it) fail with job_timeout, once, and a late worker cannot undo it. Against a real
redis-server (the broker too); the artifacts on local disk."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.artifacts import LocalArtifactStore
from services.common.config import Settings
from services.distributed import app as celery_app
from services.distributed.queue import reap_overdue, resend_stalled
from services.distributed.state import DistributedState, distributed_state
from services.gateway.jobs import Job, StageState, new_job_id
from services.gateway.redis_state import connect
from services.gateway.storage import TenantArtifactStore, person_input_key
from tests.redis_server import redis_server

DEADLINE_S = 60.0


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DistributedState, Settings]]:
    with redis_server(tmp_path / "redis") as redis:
        settings = Settings(
            mode="distributed",
            redis_url=redis.url,
            job_deadline_s=DEADLINE_S,
            data_dir=tmp_path,
            task_time_limit_s=1,
            visibility_timeout_s=2,  # a job silent for 3 s is stalled
        )
        monkeypatch.setattr(celery_app, "app", celery_app.make_app(settings))  # tasks go to this Redis
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


def queued_job_ids(client: redis.Redis, queue: str) -> list[str]:
    """The job ids of the task messages waiting in a stage's queue (kombu's JSON envelope)."""
    return [ast.literal_eval(json.loads(m)["headers"]["argsrepr"])[0] for m in client.lrange(queue, 0, -1)]


def test_a_silent_job_has_its_next_task_sent_again_once_per_silence(
    state: tuple[DistributedState, Settings],
) -> None:
    distributed, settings = state
    client = connect(settings.redis_url)
    lost = make_job(distributed, age_s=1)
    distributed.jobs.start(lost.id)
    distributed.jobs.set_stage(lost.id, "garment", StageState("done", 0.1))  # its pose message was lost
    never_started = make_job(distributed, age_s=1)
    finished = make_job(distributed, age_s=1)
    distributed.jobs.finish(finished.id, "succeeded")
    assert resend_stalled(distributed, settings) == 0  # not silent long enough yet

    time.sleep(settings.stall_timeout_s + 0.2)
    alive = make_job(distributed, age_s=0)
    assert resend_stalled(distributed, settings) == 2
    assert queued_job_ids(client, "pose") == [lost.id]
    assert queued_job_ids(client, "garment") == [never_started.id]
    assert resend_stalled(distributed, settings) == 0  # once per silence: they count as alive again
    assert alive.id not in queued_job_ids(client, "garment")

    # A backlog: a silent job's message may still be waiting in its queue, so nothing is sent again.
    client.delete("pose")
    time.sleep(settings.stall_timeout_s + 0.2)
    assert resend_stalled(distributed, settings) == 1  # only lost's pose task: garment's queue is not empty
    assert queued_job_ids(client, "pose") == [lost.id]
    assert queued_job_ids(client, "garment") == [never_started.id]
