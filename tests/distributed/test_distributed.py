"""Distributed mode end to end, every part a real process (tests/distributed/cluster.py): the REST
gateway, five stage queues in Redis, one Celery worker process per stage, Triton, S3.

The chaos tests break one part at a time and check that no job is lost: a worker killed mid-task,
the whole worker pool killed, redis-server restarted (AOF on), Triton gone for good.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.common.artifacts import LocalArtifactStore
from services.common.config import get_settings
from services.common.imageio import decode_image, decode_image_rgba, encode_jpeg
from services.common.inference import inference_backend
from services.distributed.queues import QUEUES
from services.gateway.redis_state import connect
from services.pipeline import Pipeline, person_prefix
from tests.distributed.cluster import STALL_TIMEOUT_S, VISIBILITY_TIMEOUT_S, Cluster, cluster
from tests.gateway.helpers import Key, encode, fitroom, free_port, wait_finished, wait_until
from tests.warp.drawn import TEE, product_image

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def key(deployment: Cluster) -> Key:
    return deployment.gateway.create_key("acme")


@pytest.fixture(scope="module")
def person_jpeg() -> bytes:
    return encode(data.astronaut(), "JPEG")


@pytest.fixture(scope="module")
def tee_png() -> bytes:
    return encode(product_image(TEE), "PNG")


def submit(client: httpx.Client, person: bytes, garment: bytes) -> str:
    response = client.post(
        "/v1/tryon",
        files={"person": ("person.jpg", person, "image/jpeg"), "garment": ("garment.png", garment, "image/png")},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def result_pixels(client: httpx.Client, job_id: str) -> np.ndarray:
    response = client.get(f"/v1/tryon/{job_id}/result")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def bucket_keys(deployment: Cluster, prefix: str = "") -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=deployment.s3.endpoint_url,
        region_name=deployment.s3.region,
        aws_access_key_id=deployment.s3.access_key,
        aws_secret_access_key=deployment.s3.secret_key,
    )
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=deployment.s3.bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def embedded_result(person: bytes, garment: bytes, workdir: Path, triton_url: str) -> np.ndarray:
    """What the embedded runner (`fitroom tryon`) makes of the same bytes with the same model server:
    one process, local disk, the whole pipeline in one call."""
    settings = get_settings().model_copy(update={"inference": "triton", "triton_url": triton_url})
    pipeline = Pipeline(LocalArtifactStore(workdir), inference_backend(settings))
    image = pipeline.tryon(decode_image(person), decode_image_rgba(garment)).image
    return decode_image(encode_jpeg(image))  # the gateway's default output is JPEG too


def test_rest_to_five_stage_queues_to_triton_and_s3_equals_the_embedded_result(
    deployment: Cluster, key: Key, person_jpeg: bytes, tee_png: bytes, tmp_path: Path
) -> None:
    assert deployment.triton is not None
    with deployment.gateway.client(key) as client:
        job_id = submit(client, person_jpeg, tee_png)
        job = wait_finished(client, job_id)
        assert job["status"] == "succeeded", job
        assert job["detected_category"] == "upper"
        assert {name: stage["status"] for name, stage in job["stages"].items()} == dict.fromkeys(QUEUES, "done")
        image = result_pixels(client, job_id)

    # Bit for bit: the stage code, the intermediate artifacts and their encodings are the same in
    # both modes. (Triton against in-process TorchScript is tests/common/test_triton_backend.py's.)
    assert np.array_equal(image, embedded_result(person_jpeg, tee_png, tmp_path, deployment.triton.grpc_url))

    # The presigned S3 link serves the same image with no API key.
    with urllib.request.urlopen(job["download_url"], timeout=10) as response:
        assert np.array_equal(decode_image(response.read()), image)

    # In S3: the result under the job, the cached pose and parse under the photo's hash, the garment
    # analysis under the garment's; the inputs and the intermediate warped garment are gone.
    job_keys = bucket_keys(deployment, f"fitroom-test/tenants/acme/jobs/{job_id}/")
    assert job_keys == [f"fitroom-test/tenants/acme/jobs/{job_id}/result.jpg"]
    tenant_keys = bucket_keys(deployment, "fitroom-test/tenants/acme/")
    assert any(k.endswith("/pose.json") for k in tenant_keys) and any(k.endswith("/labels.npy") for k in tenant_keys)
    assert any("/garment/" in k and k.endswith(".json") for k in tenant_keys)


def test_a_second_garment_reuses_the_persons_pose_and_parse(deployment: Cluster, key: Key, tee_png: bytes) -> None:
    person = encode(np.ascontiguousarray(data.astronaut()[10:]), "JPEG")
    other = encode(product_image(TEE, seed=1), "PNG")
    with deployment.gateway.client(key) as client:
        first = wait_finished(client, submit(client, person, tee_png))
        second = wait_finished(client, submit(client, person, other))
    assert first["status"] == second["status"] == "succeeded", (first, second)
    assert first["stages"]["pose"]["status"] == "done" and first["stages"]["parser"]["status"] == "done"
    assert second["stages"]["pose"]["status"] == "cached" and second["stages"]["parser"]["status"] == "cached"
    assert second["stages"]["garment"]["status"] == "done"


def test_a_batch_on_a_registered_person_spreads_over_the_workers(deployment: Cluster, key: Key, tee_png: bytes) -> None:
    """Three garments on one registered person, with two pose workers competing for the batch's jobs:
    every job succeeds, pose and parser run once (the Redis person lock), and erasing the batch and
    the person takes their files out of S3."""
    extra = deployment.workers.start("pose")
    photo = encode(np.ascontiguousarray(data.astronaut()[:, 12:]), "JPEG")
    tee = "data:image/png;base64," + base64.b64encode(tee_png).decode()
    try:
        with deployment.gateway.client(key) as client:
            garment_ids = []
            for seed in (2, 3):
                files = {"image": ("g.png", encode(product_image(TEE, seed=seed), "PNG"), "image/png")}
                response = client.post("/v1/garments", files=files, data={"category": "upper"})
                assert response.status_code == 201, response.text
                garment_ids.append(response.json()["id"])
            person = client.post("/v1/persons", files={"person": ("me.jpg", photo, "image/jpeg")})
            assert person.status_code == 201, person.text
            person_id = person.json()["id"]
            body = {"person_id": person_id, "garment_ids": garment_ids, "garments": [tee], "intermediates": True}
            response = client.post("/v1/tryon/batch", json=body)
            assert response.status_code == 202, response.text
            batch_id = response.json()["id"]
            batch = client.get(f"/v1/tryon/batch/{batch_id}", params={"wait": 60}).json()
            while batch["status"] != "finished":
                batch = client.get(f"/v1/tryon/batch/{batch_id}", params={"wait": 60}).json()
            assert batch["counts"]["succeeded"] == 3, batch
            jobs = [client.get(job["status_url"]).json() for job in batch["jobs"]]
            for stage in ("pose", "parser"):
                assert sorted(job["stages"][stage]["status"] for job in jobs) == ["cached", "cached", "done"], stage
            for job in jobs:
                assert client.get(job["result_url"]).status_code == 200
                assert client.get(f"/v1/tryon/{job['id']}/intermediates/warped").status_code == 200
            tenant = "fitroom-test/tenants/acme/"
            cache = tenant + person_prefix(decode_image(photo))
            assert bucket_keys(deployment, f"{tenant}persons/{person_id}/") and bucket_keys(deployment, cache)
            assert client.delete(f"/v1/tryon/batch/{batch_id}").status_code == 204
            assert client.delete(f"/v1/persons/{person_id}").status_code == 204
            assert client.get(f"/v1/tryon/batch/{batch_id}").status_code == 404
        assert not any(bucket_keys(deployment, f"{tenant}jobs/{job['id']}/") for job in jobs)
        assert not bucket_keys(deployment, f"{tenant}persons/{person_id}/") and not bucket_keys(deployment, cache)
        assert not bucket_keys(deployment, f"{tenant}batches/{batch_id}/")
    finally:
        deployment.workers.kill(extra)


def test_a_worker_killed_mid_task_and_replaced_the_job_still_succeeds(
    deployment: Cluster, key: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    triton = deployment.triton
    assert triton is not None
    person = encode(np.ascontiguousarray(data.astronaut()[:, ::-1]), "JPEG")  # a new photo: pose must run
    triton.pause()  # the pose task blocks inside its inference call: mid-task, for sure
    try:
        with deployment.gateway.client(key) as client:
            job_id = submit(client, person, tee_png)
            assert wait_until(
                lambda: client.get(f"/v1/tryon/{job_id}").json()["stages"]["pose"]["status"] == "running", 30
            )
            (pose_worker,) = deployment.workers.of("pose")
            deployment.workers.kill(pose_worker)
            triton.resume()
            deployment.workers.start("pose")
            started = time.monotonic()
            job = wait_finished(client, job_id, timeout=VISIBILITY_TIMEOUT_S + 60)
    finally:
        triton.resume()
    assert job["status"] == "succeeded", job
    # The broker handed the task back once the visibility timeout passed, not before.
    assert time.monotonic() - started < VISIBILITY_TIMEOUT_S + 30


def test_a_pool_process_killed_mid_task_is_replaced_and_the_task_rerun(
    deployment: Cluster, key: Key, tee_png: bytes
) -> None:
    triton = deployment.triton
    assert triton is not None
    person = encode(np.ascontiguousarray(data.astronaut()[20:]), "JPEG")
    triton.pause()
    try:
        with deployment.gateway.client(key) as client:
            job_id = submit(client, person, tee_png)
            assert wait_until(
                lambda: client.get(f"/v1/tryon/{job_id}").json()["stages"]["pose"]["status"] == "running", 30
            )
            (pose_worker,) = deployment.workers.of("pose")
            assert pose_worker.kill_pool_process()  # as the OOM killer would
            triton.resume()
            started = time.monotonic()
            job = wait_finished(client, job_id, timeout=60)
    finally:
        triton.resume()
    assert job["status"] == "succeeded", job
    # reject_on_worker_lost: the worker hands the task straight back, no visibility timeout to wait.
    assert time.monotonic() - started < VISIBILITY_TIMEOUT_S


def test_jobs_resume_when_the_whole_worker_pool_returns(deployment: Cluster, key: Key, tee_png: bytes) -> None:
    triton = deployment.triton
    assert triton is not None
    persons = [encode(np.ascontiguousarray(data.astronaut()[:, 5 * i :]), "JPEG") for i in range(1, 5)]
    triton.pause()  # every job stops at its first inference: all are mid-flight
    try:
        with deployment.gateway.client(key) as client:
            job_ids = [submit(client, person, tee_png) for person in persons]
            assert wait_until(
                lambda: client.get(f"/v1/tryon/{job_ids[0]}").json()["stages"]["pose"]["status"] == "running", 30
            )
            deployment.workers.kill_all()
            triton.resume()
            assert {client.get(f"/v1/tryon/{job_id}").json()["status"] for job_id in job_ids} <= {"queued", "running"}
            deployment.workers.start_all()
            jobs = [wait_finished(client, job_id, timeout=VISIBILITY_TIMEOUT_S + 90) for job_id in job_ids]
    finally:
        triton.resume()
    assert [job["status"] for job in jobs] == ["succeeded"] * len(jobs), jobs


def test_a_lost_task_message_is_sent_again_and_the_job_succeeds(deployment: Cluster, key: Key, tee_png: bytes) -> None:
    """The broker loses a message (Redis popped it for a worker that died before recording it, or a
    Redis that fsyncs every second crashed): the job falls silent, and the gateway's reaper sends its
    next task again after FITROOM_VISIBILITY_TIMEOUT_S + FITROOM_TASK_TIME_LIMIT_S."""
    person = encode(np.ascontiguousarray(data.astronaut()[30:, 10:]), "JPEG")
    redis = connect(deployment.redis.url)
    (garment_worker,) = deployment.workers.of("garment")
    deployment.workers.kill(garment_worker)  # nobody takes the message before it is lost
    with deployment.gateway.client(key) as client:
        job_id = submit(client, person, tee_png)
        lost = redis.rpop("garment")
        assert lost is not None and job_id in lost
        started = time.monotonic()
        deployment.workers.start("garment")
        job = wait_finished(client, job_id, timeout=STALL_TIMEOUT_S + 60)
    assert job["status"] == "succeeded", job
    assert time.monotonic() - started >= STALL_TIMEOUT_S - 15  # sent again for silence, not at once
    assert "sending its garment task again" in deployment.gateway.log()


def test_no_job_is_lost_when_redis_restarts_mid_run(deployment: Cluster, key: Key, person_jpeg: bytes) -> None:
    garments = [encode(product_image(TEE, seed=20 + i), "PNG") for i in range(4)]
    with deployment.gateway.client(key) as client:
        job_ids = [submit(client, person_jpeg, garment) for garment in garments]
        time.sleep(0.5)
        deployment.redis.stop()  # SHUTDOWN: the AOF is flushed, as in a rolling restart
        time.sleep(2.0)
        deployment.redis.start()
        jobs = [wait_finished(client, job_id, timeout=VISIBILITY_TIMEOUT_S + 90) for job_id in job_ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(jobs), jobs


def test_with_triton_down_jobs_retry_then_fail_with_inference_unavailable(
    deployment: Cluster, key: Key, tee_png: bytes
) -> None:
    triton = deployment.triton
    assert triton is not None
    person = encode(np.ascontiguousarray(data.astronaut()[:, 30:]), "JPEG")  # pose must run: Triton is needed
    triton.kill()
    try:
        with deployment.gateway.client(key) as client:
            job = wait_finished(client, submit(client, person, tee_png), timeout=90)
    finally:
        triton.start()
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "inference_unavailable", job
    assert "retries" in job["error"]["message"]
    assert job["stages"]["pose"]["status"] == "failed"


def test_a_job_that_kills_its_worker_every_time_fails_with_worker_lost(
    deployment: Cluster, key: Key, tee_png: bytes
) -> None:
    """A poison input: each time its pose task runs, the pool process running it dies. After
    FITROOM_MAX_TASK_ATTEMPTS (3) deaths the next delivery fails the job instead of dying again."""
    triton = deployment.triton
    assert triton is not None and triton.process is not None
    person = encode(np.ascontiguousarray(data.astronaut()[40:, 40:]), "JPEG")
    # Freeze only the process that executes the models: tritonserver still accepts every request,
    # so each delivery, from whatever new pool process, blocks in its first inference call.
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        with deployment.gateway.client(key) as client:
            job_id = submit(client, person, tee_png)
            (pose_worker,) = deployment.workers.of("pose")
            redis = connect(deployment.redis.url)
            for started in range(1, 4):
                # The job store counts every start of the stage: wait for this delivery's.
                assert wait_until(
                    lambda n=started: int(redis.hget(f"fitroom:job:{job_id}", "stage_attempts:pose") or 0) == n, 30
                )
                time.sleep(0.5)  # the task is inside its inference call
                assert pose_worker.kill_pool_process()
            job = wait_finished(client, job_id, timeout=60)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "worker_lost", job
    assert "3 attempts" in job["error"]["message"]
    assert job["stages"]["pose"]["status"] == "failed"


def test_an_s3_outage_is_retried_through_and_a_lasting_one_answered_503(
    deployment: Cluster, key: Key, tee_png: bytes
) -> None:
    person = encode(np.ascontiguousarray(data.astronaut()[60:, :480]), "JPEG")
    with deployment.gateway.client(key) as client:
        job_id = submit(client, person, tee_png)
        deployment.s3.stop()  # the job's tasks now fail to read and write: they retry with backoff
        time.sleep(0.5)
        deployment.s3.start()
        job = wait_finished(client, job_id, timeout=60)
        assert job["status"] == "succeeded", job

        deployment.s3.stop()
        try:
            response = client.post(
                "/v1/tryon",
                files={"person": ("p.jpg", person, "image/jpeg"), "garment": ("g.png", tee_png, "image/png")},
            )
        finally:
            deployment.s3.start()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "storage_unavailable"


def test_a_worker_serves_its_stage_metrics(deployment: Cluster, key: Key, tee_png: bytes) -> None:
    port = free_port()
    (old,) = deployment.workers.of("warp")
    deployment.workers.kill(old)  # nothing is queued for warp now: the new worker takes the next task
    deployment.workers.start("warp", True, "--metrics-port", str(port))
    person = encode(np.ascontiguousarray(data.astronaut()[:480, 32:]), "JPEG")
    with deployment.gateway.client(key) as client:
        assert wait_finished(client, submit(client, person, tee_png))["status"] == "succeeded"
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'fitroom_worker_tasks_total{outcome="done",stage="warp"} 1.0' in text, text
    assert 'fitroom_worker_task_seconds_count{stage="warp"} 1.0' in text
    assert 'fitroom_worker_task_waited_seconds_count{stage="warp"} 1.0' in text


def test_worker_health_answers_for_a_live_worker_only(deployment: Cluster) -> None:
    (parser_worker,) = deployment.workers.of("parser")
    health = ("worker-health", "--stage", "parser", "--timeout")
    alive = fitroom(*health, "5", "--name", parser_worker.name, env=deployment.env)
    assert alive.returncode == 0, alive.stderr
    absent = fitroom(*health, "1", "--name", "nobody", env=deployment.env)
    assert absent.returncode == 1 and "no answer" in absent.stderr
