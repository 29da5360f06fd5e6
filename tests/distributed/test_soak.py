"""Soak: jobs through two workers per stage while a random worker is SIGKILLed every few seconds and
redis-server (AOF on) is SIGKILLed and restarted once, mid-soak.

Every job must end succeeded, or failed with a clear code (worker_lost, after a stage's worker died
max_task_attempts times); none stuck, none lost, exactly one result per succeeded job, and exactly
one webhook event per finished job, each signed, verified by the receiver.

FITROOM_SOAK_JOBS sets the number of jobs (100 by default; issue 19's figure is for 200).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from skimage import data

from services.distributed.queues import QUEUES
from services.gateway.redis_state import connect
from services.gateway.webhooks import verify_signature
from tests.distributed.cluster import VISIBILITY_TIMEOUT_S, Cluster, cluster
from tests.distributed.test_distributed import bucket_keys, result_pixels
from tests.gateway.helpers import LocalHttp, encode, reply, wait_finished, wait_until
from tests.warp.drawn import TEE, product_image

pytestmark = pytest.mark.distributed

JOBS = int(os.environ.get("FITROOM_SOAK_JOBS", "100"))
PERSONS = 8
GARMENTS = 5
KILL_EVERY_S = (1.0, 3.0)
# Jobs arrive over a while, as a storefront's traffic would, so that the chaos has time to strike
# however fast the machine drains the queue (all at once, one run saw only 8 kills).
SUBMIT_EVERY_S = 0.4
# Each kill can hold a task back for the visibility timeout, so unbounded chaos can outlast the
# jobs it delays (one run here kept killing for 8 minutes): it stops after this many.
MAX_KILLS = 16
# Redis goes down once this far into the submissions, for this long.
REDIS_DOWN_AT = 0.4
REDIS_DOWN_S = 2.0
SOAK_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalHttp]:
    receiver = LocalHttp({"/hook": reply(200, b"{}", "application/json")})
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, receiver: LocalHttp) -> Iterator[Cluster]:
    env = {"FITROOM_URL_ALLOW_HOSTS": f"127.0.0.1:{receiver.port}", "FITROOM_WEBHOOK_BACKOFF_S": "0.5"}
    with cluster(tmp_path_factory.mktemp("soak"), workers_per_stage=2, env=env) as running:
        yield running


def chaos(deployment: Cluster, stop: threading.Event, rng: random.Random, kills: Counter[str]) -> None:
    """Every few seconds SIGKILL a random serving worker: its pool process (as the OOM killer would) or the
    whole worker (as a lost node would), then start a replacement, so two per stage keep running."""
    workers = deployment.workers
    while sum(kills.values()) < MAX_KILLS and not stop.wait(rng.uniform(*KILL_EVERY_S)):
        # Only serving workers: killing replacements still loading their models did no work but
        # slowed the machine, and on a loaded one that can feed on itself.
        serving = [w for w in workers.running if w.ready()]
        if not serving:
            continue
        victim = rng.choice(serving)
        if rng.random() < 0.5 and victim.kill_pool_process():
            kills["pool process"] += 1  # the worker forks a new one itself
            continue
        workers.kill(victim)
        kills["worker"] += 1
        workers.start(victim.stage, wait=False)


def submit(client: httpx.Client, person: bytes, garment: bytes, callback_url: str, key: str) -> str:
    """POST the job as a storefront would: while the service answers 503, again with the same
    Idempotency-Key (so a retry never makes a second job)."""
    files = {"person": ("person.jpg", person, "image/jpeg"), "garment": ("garment.png", garment, "image/png")}
    deadline = time.monotonic() + 60
    while True:
        response = client.post(
            "/v1/tryon", files=files, data={"callback_url": callback_url}, headers={"Idempotency-Key": key}
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.status_code in (200, 202), response.text
    return response.json()["id"]


def test_jobs_while_workers_are_killed_and_redis_restarts(
    deployment: Cluster, receiver: LocalHttp, tmp_path: Path
) -> None:
    rng = random.Random(7)
    astronaut = data.astronaut()
    persons = [encode(np.ascontiguousarray(astronaut[4 * i :, 2 * i :]), "JPEG") for i in range(PERSONS)]
    garments = [encode(product_image(TEE, seed=seed), "PNG") for seed in range(GARMENTS)]
    key = deployment.gateway.create_key("soak")
    kills: Counter[str] = Counter()
    stop = threading.Event()
    killer = threading.Thread(target=chaos, args=(deployment, stop, rng, kills), daemon=True)
    started = time.monotonic()
    with deployment.gateway.client(key) as client:
        killer.start()
        try:
            job_ids = []
            for i in range(JOBS):
                if i == int(JOBS * REDIS_DOWN_AT):
                    deployment.redis.kill()  # SIGKILL: only the append-only file is left
                    time.sleep(REDIS_DOWN_S)
                    deployment.redis.start()
                    kills["redis"] += 1
                person, garment = persons[i % PERSONS], garments[i % GARMENTS]
                job_ids.append(submit(client, person, garment, f"{receiver.url}/hook", f"soak-{i}"))
                time.sleep(SUBMIT_EVERY_S)
            jobs = [wait_finished(client, job_id, timeout=SOAK_TIMEOUT_S) for job_id in job_ids]
        finally:
            stop.set()
            killer.join()
        elapsed = time.monotonic() - started
        outcomes = Counter(job["status"] if job["status"] == "succeeded" else job["error"]["code"] for job in jobs)
        print(f"\nsoak: {JOBS} jobs in {elapsed:.0f} s, kills {dict(kills)}, outcomes {dict(outcomes)}")
        assert kills["worker"] + kills["pool process"] >= 10, kills  # the chaos really happened
        assert len(set(job_ids)) == JOBS  # a retried submission never made a second job

        # Every job ended: succeeded, or failed with the code of what happened to it.
        failed = [(job["id"], job["error"], job["stages"]) for job in jobs if job["status"] == "failed"]
        assert set(outcomes) <= {"succeeded", "worker_lost"}, (outcomes, failed)
        assert outcomes["succeeded"] >= JOBS * 0.9, outcomes
        for job in jobs:
            if job["status"] == "failed":
                assert "died" in job["error"]["message"], job

        # None stuck or lost: no job left unfinished. A task that a killed worker held comes back
        # after the visibility timeout, finds its job finished and is dropped: the queues drain.
        redis = connect(deployment.redis.url)
        assert redis.zcard("fitroom:jobs:unfinished") == 0
        assert wait_until(
            lambda: redis.hlen("unacked") == 0 and all(redis.llen(queue) == 0 for queue in QUEUES),
            VISIBILITY_TIMEOUT_S + 30,
            interval=1.0,
        ), (redis.hlen("unacked"), [redis.llen(queue) for queue in QUEUES])
        assert [job["status"] for job in jobs] == [
            client.get(f"/v1/tryon/{job['id']}").json()["status"] for job in jobs
        ], "a late duplicate delivery changed a finished job"

        # Exactly one webhook event per finished job, signed, saying how it ended. (Delivery is at least
        # once: a dispatcher cut off mid-send by the Redis restart may send an event twice, same id.)
        assert wait_until(lambda: len({r.body for r in receiver.requests_to("/hook")}) >= JOBS, 60, interval=0.5)
        time.sleep(2)  # time enough for a duplicate to show up
        events: dict[str, set[str]] = {}
        deliveries = receiver.requests_to("/hook")
        for delivery in deliveries:
            assert verify_signature(key.webhook_secret, delivery.headers["fitroom-signature"], delivery.body)
            event = json.loads(delivery.body)
            assert event["id"] == delivery.headers["fitroom-event-id"]
            events.setdefault(event["data"]["id"], set()).add(event["id"])
            assert event["type"] == f"tryon.{event['data']['status']}"
        assert {job_id: len(ids) for job_id, ids in events.items()} == {job["id"]: 1 for job in jobs}
        print(f"soak: {len(deliveries)} webhook deliveries for {JOBS} events")

        # Exactly one result per succeeded job, none for a failed one; no inputs or intermediates left.
        keys = bucket_keys(deployment, "fitroom-test/tenants/soak/jobs/")
        per_job = Counter(k.split("/")[4] for k in keys)
        for job in jobs:
            result = f"fitroom-test/tenants/soak/jobs/{job['id']}/result.jpg"
            expected = [result] if job["status"] == "succeeded" else []
            assert sorted(k for k in keys if k.split("/")[4] == job["id"]) == expected, job["id"]
        assert set(per_job) <= {job["id"] for job in jobs}

        # The same person and garment give the same picture, however often their tasks were rerun.
        by_inputs: dict[int, np.ndarray] = {}
        for i, job in enumerate(jobs):
            if job["status"] != "succeeded":
                continue
            pixels = result_pixels(client, job["id"])
            reference = by_inputs.setdefault(i % (PERSONS * GARMENTS), pixels)
            assert np.array_equal(pixels, reference), job["id"]
