"""Job state survives the process: a server killed mid-job, or stopped, loses nothing; and a full
queue answers 503 with Retry-After. These tests own a server of their own (one worker, a queue of
two) because they stop it."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from tests.gateway.conftest import Receiver, server_env
from tests.gateway.helpers import Key, Server, encode, wait_finished, wait_until

QUEUE_SIZE = 2
RETRY_AFTER_S = 7


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory, repository: Path, receiver: Receiver) -> Iterator[Server]:
    env = {
        **server_env([receiver]),
        "FITROOM_QUEUE_SIZE": str(QUEUE_SIZE),
        "FITROOM_QUEUE_RETRY_AFTER_S": str(RETRY_AFTER_S),
    }
    srv = Server(tmp_path_factory.mktemp("restartable"), env, workers=1)
    srv.start()
    yield srv
    if srv.process is not None:
        srv.stop()


@pytest.fixture(scope="module")
def key(restartable: Server) -> Key:
    return restartable.create_key("acme")


def person(variant: int) -> bytes:
    """The astronaut, shifted a little: a photo the server has not cached, so pose and parser run."""
    return encode(np.ascontiguousarray(np.roll(data.astronaut(), 3 * variant, axis=1)), "JPEG")


def submit(server: Server, key: Key, person_image: bytes, garment: bytes, **fields: str) -> str:
    with server.client(key) as client:
        files = {"person": ("p.jpg", person_image, "image/jpeg"), "garment": ("g.png", garment, "image/png")}
        response = client.post("/v1/tryon", files=files, data=fields)
        assert response.status_code == 202, response.text
        return response.json()["id"]


def status(server: Server, key: Key, job_id: str) -> str:
    with server.client(key) as client:
        return client.get(f"/v1/tryon/{job_id}").json()["status"]


def stored_status(server: Server, job_id: str) -> str:
    with sqlite3.connect(server.data_dir / "gateway.sqlite3") as db:
        return db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def test_a_full_queue_answers_503_with_retry_after(restartable: Server, key: Key, tee_png: bytes) -> None:
    accepted, refused = [], []
    with restartable.client(key) as client:
        files = {"person": ("p.jpg", person(1), "image/jpeg"), "garment": ("g.png", tee_png, "image/png")}
        for _ in range(QUEUE_SIZE + 4):
            response = client.post("/v1/tryon", files=files)
            (accepted if response.status_code == 202 else refused).append(response)
        assert refused, "one worker and a queue of two cannot take six jobs at once"
        for response in refused:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "queue_full"
            assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        assert QUEUE_SIZE <= len(accepted) <= QUEUE_SIZE + 1  # the queue, and the one a worker took at once
        for response in accepted:
            assert wait_finished(client, response.json()["id"])["status"] == "succeeded"
        text = client.get("/metrics").text
    assert 'route="/v1/tryon",status="503"' in text


def test_a_server_killed_mid_job_loses_nothing(
    restartable: Server, key: Key, receiver: Receiver, tee_png: bytes
) -> None:
    jobs = [submit(restartable, key, person(10 + n), tee_png, callback_url=f"{receiver.url}/ok") for n in range(3)]
    assert wait_until(lambda: status(restartable, key, jobs[0]) == "running", 30)
    restartable.stop(signal.SIGKILL)  # no shutdown code runs at all
    assert stored_status(restartable, jobs[0]) == "running"
    assert all(stored_status(restartable, job_id) in ("queued", "running", "succeeded") for job_id in jobs[1:])

    restartable.start()
    assert "re-queued" in restartable.log()
    with restartable.client(key) as client:
        for job_id in jobs:
            done = wait_finished(client, job_id)
            assert done["status"] == "succeeded", done
            assert all(stage["status"] in ("done", "cached") for stage in done["stages"].values())
            result = client.get(f"/v1/tryon/{job_id}/result")
            assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    # Each job's webhook went out, though the jobs finished in a process that had not queued them.

    def notified() -> set[str]:
        return {json.loads(r.body)["data"]["id"] for r in receiver.requests_to("/ok")}

    assert wait_until(lambda: set(jobs) <= notified(), 30)


def test_a_stopped_server_requeues_its_running_job(restartable: Server, key: Key, tee_png: bytes) -> None:
    job_id = submit(restartable, key, person(20), tee_png)
    assert wait_until(lambda: status(restartable, key, job_id) == "running", 30)
    started = time.monotonic()
    restartable.stop(signal.SIGTERM)
    assert time.monotonic() - started < 15  # the worker stops at the next stage, it does not finish the job
    assert stored_status(restartable, job_id) in ("queued", "succeeded")
    assert "Application shutdown complete" in restartable.log()

    restartable.start()
    with restartable.client(key) as client:
        assert wait_finished(client, job_id)["status"] == "succeeded"
