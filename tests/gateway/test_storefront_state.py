"""The storefront's state, SQLite (embedded mode) and Redis (distributed mode) held to the same
behaviour: persons, batches (idempotency, first-writer-wins finish with its webhook queued once, the
batch settled by its last job), jobs carrying person_id, batch_id and intermediates, and retention."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.common.config import Settings
from services.gateway.db import Database
from services.gateway.jobs import Job, JobStore, SqliteJobStore, new_job_id
from services.gateway.persons import (
    Batch,
    BatchKeyTaken,
    BatchStore,
    Person,
    PersonRegistry,
    SqliteBatchStore,
    SqlitePersonRegistry,
    new_batch_id,
    new_person_id,
    settle_batch,
)
from services.gateway.redis_persons import RedisBatchStore, RedisPersonRegistry
from services.gateway.redis_state import RedisJobStore, connect
from services.gateway.storage import TenantArtifactStore, person_image_key, result_key
from services.gateway.webhooks import Webhook
from tests.redis_server import RedisProcess, redis_server


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class State:
    kind: str
    jobs: JobStore
    persons: PersonRegistry
    batches: BatchStore
    deliveries: Callable[[], list[dict]]  # the queued webhook payloads


@pytest.fixture(params=["sqlite", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    if request.param == "sqlite":
        db = Database(tmp_path / "db.sqlite3")

        def sqlite_deliveries() -> list[dict]:
            return [json.loads(row["payload"]) for row in db.query("SELECT payload FROM webhook_deliveries")]

        yield State("sqlite", SqliteJobStore(db), SqlitePersonRegistry(db), SqliteBatchStore(db), sqlite_deliveries)
        db.close()
        return
    client: redis.Redis = connect(request.getfixturevalue("redis_proc").url)
    client.flushall()

    def redis_deliveries() -> list[dict]:
        return [json.loads(client.hget(key, "payload")) for key in client.scan_iter("fitroom:webhook:evt_*")]

    yield State("redis", RedisJobStore(client), RedisPersonRegistry(client), RedisBatchStore(client), redis_deliveries)
    client.close()


def person(tenant: str = "acme", **fields: object) -> Person:
    return Person(id=new_person_id(), tenant=tenant, person_prefix="person/abc/", width=4, height=3, **fields)  # type: ignore[arg-type]


def batch_of(job_ids: list[str], tenant: str = "acme", **fields: object) -> Batch:
    return Batch(
        id=new_batch_id(),
        tenant=tenant,
        job_ids=tuple(job_ids),
        category="auto",
        output_format="jpeg",
        person_prefix="person/abc/",
        base_url="http://x",
        **fields,  # type: ignore[arg-type]
    )


def job(batch_id: str | None = None, **fields: object) -> Job:
    return Job(
        id=new_job_id(),
        tenant="acme",
        category="auto",
        output_format="jpeg",
        person_prefix="person/abc/",
        base_url="http://x",
        batch_id=batch_id,
        **fields,  # type: ignore[arg-type]
    )


def test_persons_are_per_tenant_per_shopper_and_deleted_once(state: State) -> None:
    mine, theirs = person(shopper_id="s-1"), person("globex", shopper_id="s-1")
    for item in (mine, theirs):
        state.persons.add(item)
    assert state.persons.get("acme", mine.id) == mine
    assert state.persons.get("globex", mine.id) is None
    assert state.persons.of_shopper("acme", "s-1") == [mine]
    assert state.persons.delete("globex", mine.id) is None  # not theirs to delete
    assert {p.id for p in state.persons.created_before(time.time() + 1)} == {mine.id, theirs.id}
    assert state.persons.delete("acme", mine.id) == mine
    assert state.persons.get("acme", mine.id) is None and state.persons.of_shopper("acme", "s-1") == []
    assert state.persons.delete("acme", mine.id) is None


def test_jobs_carry_their_person_batch_and_intermediates(state: State) -> None:
    item = job(batch_id=new_batch_id(), person_id=new_person_id(), intermediates=True)
    state.jobs.create(item, 60)
    assert state.jobs.get("acme", item.id) == item
    plain = job()
    state.jobs.create(plain, 60)
    assert state.jobs.get("acme", plain.id) == plain and not plain.intermediates and plain.owns_person_cache
    assert not item.owns_person_cache
    assert [j.id for j in state.jobs.get_many("acme", [plain.id, "job_gone", item.id])] == [plain.id, item.id]
    assert state.jobs.get_many("globex", [plain.id]) == []


def test_a_batch_ends_once_with_its_last_job_and_its_webhook_is_queued_once(state: State) -> None:
    batch_id = new_batch_id()
    members = [job(batch_id) for _ in range(2)]
    batch = batch_of([m.id for m in members], callback_url="https://shop.example/hook", idempotency_key="k1")
    batch = dataclasses.replace(batch, id=batch_id)
    state.batches.create(batch, 60)
    for member in members:
        state.jobs.create(member, 60)
    with pytest.raises(BatchKeyTaken):
        state.batches.create(batch_of([], idempotency_key="k1"), 60)
    assert state.batches.by_idempotency_key("acme", "k1", 60) == batch
    assert state.batches.by_idempotency_key("globex", "k1", 60) is None

    def webhook(finished: Batch, jobs: list[Job]) -> Webhook:
        return Webhook("https://shop.example/hook", {"type": "batch.finished", "data": {"id": finished.id}})

    state.jobs.start(members[0].id)
    state.jobs.finish(members[0].id, "succeeded")
    settled = settle_batch(state.batches, state.jobs, "acme", batch.id, webhook)
    assert settled.batch == batch and not settled.ended_now  # one job still queued
    state.jobs.finish(members[1].id, "failed", error=("no_person_detected", "none"))
    ends = [settle_batch(state.batches, state.jobs, "acme", batch.id, webhook) for _ in range(3)]
    assert [s.ended_now for s in ends] == [True, False, False]
    assert all(s.batch is not None and s.batch.finished and s.batch.finished_at for s in ends)
    assert [d["data"]["id"] for d in state.deliveries()] == [batch.id]  # one webhook, however often settled
    assert state.batches.finish(batch.id, webhook) is None  # first writer wins
    assert state.batches.finished_before(time.time() + 1) == [ends[0].batch]
    assert settle_batch(state.batches, state.jobs, "globex", batch.id, webhook).batch is None

    assert state.batches.of_shopper("acme", "nobody") == []
    assert state.batches.delete("globex", batch.id) is None
    assert state.batches.delete("acme", batch.id) is not None
    assert state.batches.get("acme", batch.id) is None
    state.batches.create(batch_of([], idempotency_key="k1"), 60)  # the key went with its batch


def test_batches_persons_and_their_jobs_are_erased_after_the_retention_period(tmp_path: Path) -> None:
    from services.gateway.runtime import Gateway

    gateway = Gateway(Settings(data_dir=tmp_path))  # not started: no threads, no models
    store = TenantArtifactStore(gateway.artifacts, "acme")
    registered = person()
    gateway.persons.add(registered)
    store.put(person_image_key(registered.id), b"jpeg")
    batch_id = new_batch_id()
    members = [job(batch_id, person_id=registered.id) for _ in range(2)]
    batch = dataclasses.replace(batch_of([m.id for m in members], person_id=registered.id), id=batch_id)
    gateway.batches.create(batch, 60)
    for member in members:
        gateway.jobs.create(member, 60)
        gateway.jobs.claim(member.id)
        store.put(result_key(member.id, "jpeg"), b"jpeg")
        gateway.jobs.finish(member.id, "succeeded")
    store.put("person/abc/v2/pose.json", b"{}")  # the person's cached pose
    assert gateway.settle_batch("acme", batch.id).ended_now
    assert gateway.expire_jobs(time.time() - 60) == 0  # nothing is old enough yet
    assert gateway.expire_jobs(time.time() + 1) == 2
    assert gateway.batches.get("acme", batch.id) is None and gateway.persons.get("acme", registered.id) is None
    assert not any(store.exists(result_key(m.id, "jpeg")) for m in members)
    assert store.list("") == []  # the photo and its cached pose went with the person
