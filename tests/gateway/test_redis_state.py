"""The gateway's stores on a real redis-server (tests/redis_server.py), against the SQLite ones where
the two must agree: jobs, garments, API keys and the webhook outbox; races between writers, a
Redis restart, a Redis that is down, and two gateway replicas sharing the webhook deliveries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from services.common.config import PROJECT_ROOT, Settings
from services.common.errors import QueueUnavailable
from services.gateway.db import Database
from services.gateway.fetch import SafeFetcher, UrlPolicy
from services.gateway.jobs import (
    Garment,
    GarmentRegistry,
    IdempotencyKeyTaken,
    Job,
    JobStore,
    SqliteGarmentRegistry,
    SqliteJobStore,
    StageState,
    new_garment_id,
    new_job_id,
)
from services.gateway.keys import ApiKeyStore, KeyStore
from services.gateway.metrics import Metrics
from services.gateway.redis_state import RedisGarmentRegistry, RedisJobStore, RedisKeyStore, connect
from services.gateway.redis_webhooks import RedisWebhookOutbox, queue_webhook
from services.gateway.webhooks import DeliveryState, Outbox, WebhookOutbox, verify_signature
from services.gateway.worker import job_webhook
from services.pipeline import STAGES
from tests.gateway.helpers import LocalHttp, Route, reply, wait_until
from tests.redis_server import RedisProcess, redis_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def client(redis_proc: RedisProcess) -> Iterator[redis.Redis]:
    client = connect(redis_proc.url)
    client.flushall()
    yield client
    client.close()


@dataclass
class State:
    kind: str
    jobs: JobStore
    garments: GarmentRegistry
    keys: ApiKeyStore
    stored: Callable[[], bytes]  # everything the store holds, to look for secrets in


@pytest.fixture(params=["sqlite", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> State:
    if request.param == "sqlite":
        db = Database(tmp_path / "db.sqlite3")
        return State("sqlite", SqliteJobStore(db), SqliteGarmentRegistry(db), KeyStore(db), db.path.read_bytes)
    client: redis.Redis = request.getfixturevalue("client")
    return State(
        "redis", RedisJobStore(client), RedisGarmentRegistry(client), RedisKeyStore(client), lambda: dump(client)
    )


def dump(client: redis.Redis) -> bytes:
    """Every key and value in Redis, as text."""
    parts: list[str] = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value = {
            "string": client.get,
            "hash": client.hgetall,
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1),
        }[kind](key)
        parts.append(f"{key}={value}")
    return "\n".join(parts).encode()


def job(tenant: str = "acme", **fields: object) -> Job:
    return Job(
        id=new_job_id(),
        tenant=tenant,
        category="auto",
        output_format="jpeg",
        person_prefix="person/abc/",
        base_url="http://x",
        **fields,  # type: ignore[arg-type]
    )


def garment(tenant: str = "acme", created_at: float | None = None, sku: str | None = None) -> Garment:
    return Garment(
        id=new_garment_id(),
        tenant=tenant,
        category="upper",
        requested_category="auto",
        width=640,
        height=480,
        cache_prefix="garment/x/",
        sku=sku,
        created_at=time.time() if created_at is None else created_at,
    )


# ------------------------------------------------------------------------------ job contract


def test_job_lifecycle(state: State) -> None:
    jobs = state.jobs
    t0 = time.time()
    a = jobs.create(job(created_at=t0 - 30, shopper_id="shopper 1"), 60)
    b = jobs.create(job(created_at=t0 - 20, callback_url="https://hooks.example/x"), 60)
    c = jobs.create(job(tenant="globex", created_at=t0 - 10, shopper_id="shopper 1"), 60)
    assert jobs.get("acme", a.id) == a and jobs.get("globex", a.id) is None
    assert jobs.count_by_status() == {"queued": 3}

    # Embedded: claim takes a queued job once.
    claimed = jobs.claim(a.id)
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert jobs.claim(a.id) is None

    # Distributed: start begins a job, and a redelivered task resumes it.
    first = jobs.start(b.id)
    assert first is not None and first.status == "running" and first.attempts == 1 and first.started_at
    again = jobs.start(b.id)
    assert again is not None and again.attempts == 2 and again.started_at == first.started_at
    assert [jobs.count_attempt(b.id, "pose") for _ in range(3)] == [1, 2, 3]
    assert jobs.count_attempt(b.id, "warp") == 1 and jobs.count_attempt(new_job_id(), "pose") == 0
    with pytest.raises(ValueError, match="unknown stage"):
        jobs.count_attempt(b.id, "pose.attempts")
    jobs.set_stage(b.id, "pose", StageState("done", 0.25))
    shown = jobs.get("acme", b.id)
    assert shown is not None and list(shown.stages) == list(STAGES)
    assert shown.stages["pose"] == StageState("done", 0.25, attempts=3)  # set_stage keeps the count
    assert shown.stages["warp"] == StageState("pending", None, attempts=1)
    assert jobs.count_by_status() == {"running": 2, "queued": 1}

    assert [j.id for j in jobs.unfinished_before(t0)] == [a.id, b.id, c.id]  # oldest first
    assert [j.id for j in jobs.unfinished_before(t0 - 20)] == [a.id]  # strictly before
    assert [j.id for j in jobs.unfinished_before(t0, limit=2)] == [a.id, b.id]

    jobs.requeue(a.id)
    assert jobs.get("acme", a.id).status == "queued"  # type: ignore[union-attr]
    resumed = jobs.start(a.id)
    assert resumed is not None and resumed.attempts == 2

    # First writer wins: the second outcome is refused and changes nothing.
    done = jobs.finish(b.id, "succeeded", detected_category="upper")
    assert done is not None and done.status == "succeeded" and done.detected_category == "upper" and done.finished_at
    assert jobs.finish(b.id, "failed", error=("job_timeout", "late")) is None
    assert jobs.get("acme", b.id) == done
    assert jobs.start(b.id) is None and jobs.claim(b.id) is None
    jobs.requeue(b.id)
    assert jobs.get("acme", b.id).status == "succeeded"  # type: ignore[union-attr]
    failed = jobs.finish(a.id, "failed", error=("worker_lost", "the worker died"))
    assert failed is not None and (failed.error_code, failed.error_message) == ("worker_lost", "the worker died")
    assert jobs.count_by_status() == {"succeeded": 1, "failed": 1, "queued": 1}
    assert done.finished_at is not None and failed.finished_at is not None
    assert {j.id for j in jobs.finished_before(time.time() + 1)} == {a.id, b.id}
    assert [j.id for j in jobs.finished_before(failed.finished_at)] == [b.id]  # strictly before
    assert [j.id for j in jobs.unfinished_before(t0)] == [c.id]

    assert [j.id for j in jobs.of_shopper("acme", "shopper 1")] == [a.id]
    assert [j.id for j in jobs.of_shopper("globex", "shopper 1")] == [c.id]

    # Deletion: scoped by tenant, and a late worker neither resurrects nor finishes the job.
    assert jobs.delete("globex", b.id) is None
    assert jobs.delete("acme", b.id) == done
    jobs.set_stage(b.id, "fusion", StageState("running"))
    assert jobs.get("acme", b.id) is None
    assert jobs.count_attempt(b.id, "pose") == 0 and jobs.start(b.id) is None
    assert jobs.finish(b.id, "succeeded") is None
    assert jobs.delete("acme", a.id) is not None and jobs.of_shopper("acme", "shopper 1") == []
    assert jobs.count_by_status() == {"queued": 1}


def test_claim_starts_the_stages_afresh(state: State) -> None:
    jobs = state.jobs
    a = jobs.create(job(), 60)
    jobs.claim(a.id)
    jobs.count_attempt(a.id, "pose")
    jobs.set_stage(a.id, "pose", StageState("done", 0.5))
    jobs.requeue(a.id)
    again = jobs.claim(a.id)
    assert again is not None and again.attempts == 2 and again.stages["pose"] == StageState()


def test_idempotency_keys_expire_and_are_per_tenant(state: State) -> None:
    jobs = state.jobs
    old = jobs.create(job(idempotency_key="k", created_at=time.time() - 100), 60)
    assert jobs.by_idempotency_key("acme", "k", 60) is None  # older than the ttl
    assert jobs.by_idempotency_key("acme", "k", 1000) == old
    fresh = jobs.create(job(idempotency_key="k"), 60)  # takes the key over
    assert jobs.by_idempotency_key("acme", "k", 60) == fresh
    assert jobs.get("acme", old.id) is not None  # the old job stays; only its key went
    with pytest.raises(IdempotencyKeyTaken) as taken:
        jobs.create(job(idempotency_key="k"), 60)
    assert taken.value.existing == fresh
    other = jobs.create(job(tenant="globex", idempotency_key="k"), 60)  # keys are per tenant
    assert jobs.by_idempotency_key("globex", "k", 60) == other
    assert jobs.by_idempotency_key("acme", "k:with:colons", 60) is None
    jobs.delete("acme", fresh.id)
    assert jobs.by_idempotency_key("acme", "k", 60) is None  # the key goes with its job
    assert jobs.create(job(idempotency_key="k"), 60)


def test_recover(state: State) -> None:
    jobs = state.jobs
    running, queued = jobs.create(job(created_at=time.time() - 5), 60), jobs.create(job(), 60)
    jobs.start(running.id)
    if state.kind == "sqlite":  # one process owns the jobs: it queues them again itself
        assert jobs.recover() == [running.id, queued.id]
    else:  # the broker holds queued work; a replica restarting must not queue other replicas' jobs again
        assert jobs.recover() == []
        assert jobs.get("acme", running.id).status == "running"  # type: ignore[union-attr]


# --------------------------------------------------------------------------------- races


def race(n: int, call: Callable[[int], T]) -> list[T]:
    """call(0) ... call(n - 1) on n threads released at the same moment; their results in order."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]


def test_concurrent_finishes_have_one_winner(state: State) -> None:
    jobs = state.jobs
    for _ in range(10):
        target = jobs.create(job(), 60)
        jobs.start(target.id)

        def finish(i: int, job_id: str = target.id) -> Job | None:
            if i % 2:
                return jobs.finish(job_id, "succeeded", detected_category="upper")
            return jobs.finish(job_id, "failed", error=(f"code_{i}", "m"))

        winners = [outcome for outcome in race(8, finish) if outcome is not None]
        assert len(winners) == 1
        assert jobs.get("acme", target.id) == winners[0]


def test_concurrent_starts_and_a_reaper(state: State) -> None:
    """Redelivered tasks start the job while a reaper fails it: every start that got the job was
    counted, none got it after the reaper, and the reaper's outcome stands."""
    jobs = state.jobs
    target = jobs.create(job(), 60)
    barrier = threading.Barrier(7)
    starts: list[Job | None] = []
    attempts: list[int] = []
    reaped: list[Job | None] = []
    lock = threading.Lock()

    def task() -> None:
        barrier.wait()
        for _ in range(20):
            started = jobs.start(target.id)
            counted = jobs.count_attempt(target.id, "pose")
            with lock:
                starts.append(started)
                attempts.append(counted)

    def reaper() -> None:
        barrier.wait()
        time.sleep(0.005)
        reaped.append(jobs.finish(target.id, "failed", error=("job_timeout", "past the deadline")))

    threads = [threading.Thread(target=task) for _ in range(6)] + [threading.Thread(target=reaper)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = jobs.get("acme", target.id)
    assert final is not None and final.status == "failed" and final.error_code == "job_timeout"
    assert reaped == [final] or (reaped[0] is not None and reaped[0].error_code == "job_timeout")
    got = [s for s in starts if s is not None]
    assert final.attempts == len(got)  # every start that returned the job counted once
    assert all(s.finished_at is None for s in got)
    assert sorted(attempts) == list(range(1, len(attempts) + 1))  # count_attempt never lost or repeated one


# ------------------------------------------------------------------------------- garments


def test_garments_page_in_creation_order_and_stay_per_tenant(state: State) -> None:
    registry = state.garments
    t = time.time()
    made = [garment(created_at=t - 10, sku="sku 1")]
    made += [garment(created_at=t - 5) for _ in range(3)]  # a tie: ordered by id
    made += [garment(created_at=t)]
    for item in reversed(made):
        registry.add(item)
    registry.add(garment(tenant="globex"))
    expected = sorted(made, key=lambda g: (g.created_at, g.id))

    pages: list[list[Garment]] = []
    after: str | None = None
    while page := registry.list("acme", 2, after):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [g for p in pages for g in p] == expected
    assert registry.get("acme", made[0].id) == made[0] and made[0].sku == "sku 1"
    assert registry.get("globex", made[0].id) is None
    assert registry.list("acme", 10, after=new_garment_id()) == []
    assert [g.tenant for g in registry.list("globex", 10)] == ["globex"]

    assert registry.delete("globex", expected[1].id) is None
    assert registry.delete("acme", expected[1].id) == expected[1]
    assert registry.get("acme", expected[1].id) is None
    assert registry.list("acme", 2, after=expected[0].id) == expected[2:4]


# ------------------------------------------------------------------------------- API keys


def test_keys_are_stored_hashed_and_bound_to_a_tenant(state: State) -> None:
    keys = state.keys
    first, second = keys.create("acme"), keys.create("acme", "backup")
    other = keys.create("globex")
    assert first.key != second.key and first.webhook_secret == second.webhook_secret  # one secret per tenant
    assert other.webhook_secret != first.webhook_secret
    assert keys.authenticate(first.key) == "acme" and keys.authenticate(other.key) == "globex"
    assert keys.authenticate(first.key + "x") is None and keys.authenticate("Bearer nonsense") is None
    stored = state.stored()
    assert first.key.encode() not in stored and first.key.rsplit("_", 1)[1].encode() not in stored

    assert keys.revoke(first.id) and not keys.revoke(first.id) and not keys.revoke("nope")
    assert keys.authenticate(first.key) is None and keys.authenticate(second.key) == "acme"
    listed = keys.list("acme")
    assert [(k.id, k.name, k.revoked_at is not None) for k in listed] == [
        (first.id, "", True),
        (second.id, "backup", False),
    ]
    assert [k.id for k in keys.list()] == [first.id, second.id, other.id]

    with pytest.raises(ValueError, match="invalid tenant"):
        keys.create("Acme Corp")
    assert keys.webhook_secret("acme") == first.webhook_secret and keys.webhook_secret("nobody") is None
    rotated = keys.rotate_webhook_secret("acme")
    assert rotated is not None and rotated != first.webhook_secret and keys.webhook_secret("acme") == rotated
    assert keys.rotate_webhook_secret("nobody") is None
    assert keys.create("acme").webhook_secret == rotated  # a new key keeps the tenant's secret


# ------------------------------------------------------------------------ Redis restart, down


def test_a_redis_restart_keeps_jobs_garments_and_keys(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        client = connect(server.url)
        jobs, garments, keys = RedisJobStore(client), RedisGarmentRegistry(client), RedisKeyStore(client)
        stored_job = jobs.create(job(shopper_id="s"), 60)
        stored_garment = garment()
        garments.add(stored_garment)
        key = keys.create("acme")

        server.stop()  # SHUTDOWN SAVE
        server.start()
        assert jobs.get("acme", stored_job.id) == stored_job  # the same client reconnects by itself
        assert garments.get("acme", stored_garment.id) == stored_garment
        assert keys.authenticate(key.key) == "acme"

        started = jobs.start(stored_job.id)
        server.kill()  # SIGKILL: only the append-only file is left
        server.start()
        assert jobs.get("acme", stored_job.id) == started
        assert jobs.count_by_status() == {"running": 1} and [j.id for j in jobs.of_shopper("acme", "s")]
        assert keys.webhook_secret("acme") == key.webhook_secret
        client.close()


def test_redis_down_is_queue_unavailable_at_once(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        client = connect(server.url, timeout_s=0.5)
        jobs, garments, keys = RedisJobStore(client), RedisGarmentRegistry(client), RedisKeyStore(client)
        existing = jobs.create(job(), 60)
        calls: list[Callable[[], object]] = [
            lambda: jobs.create(job(), 60),
            lambda: jobs.get("acme", existing.id),
            lambda: jobs.start(existing.id),
            lambda: jobs.finish(existing.id, "failed"),
            lambda: jobs.count_by_status(),
            lambda: garments.list("acme", 10),
            lambda: keys.authenticate("fr_abc_def"),
            lambda: queue_webhook(client, existing.id, "acme", "https://x", {"type": "t"}),
        ]
        server.kill()
        for call in calls:
            began = time.monotonic()
            with pytest.raises(QueueUnavailable) as caught:
                call()
            assert time.monotonic() - began < 1.0
            assert caught.value.code == "queue_unavailable" and caught.value.http_status == 503

        # A Redis that accepts connections but never answers: the socket timeout, then 503.
        server.start()
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(QueueUnavailable):
                jobs.get("acme", existing.id)
            assert time.monotonic() - began < 3.0
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert jobs.get("acme", existing.id) == existing  # and back when Redis is
        client.close()


def test_the_redis_client_must_decode_replies(redis_proc: RedisProcess) -> None:
    raw = redis.Redis.from_url(redis_proc.url)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisJobStore(raw)
    raw.close()


# -------------------------------------------------------------------------------- webhooks

BACKOFF_S = 0.2
MAX_ATTEMPTS = 3


class Receiver(LocalHttp):
    """/ok takes every delivery, /flaky fails the first two, /down fails all, /hang holds the first one
    until `release` is set and takes the rest."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release = threading.Event()
        super().__init__({})

        def counting(path: str, failures: int) -> Route:
            def route(handler: BaseHTTPRequestHandler, body: bytes) -> None:
                with self.lock:
                    self.calls[path] = n = self.calls.get(path, 0) + 1
                if path == "/hang" and n == 1:
                    self.release.wait(30)
                reply(500 if n <= failures else 200, b"{}", "application/json")(handler, body)

            return route

        for path, failures in (("/ok", 0), ("/flaky", 2), ("/down", 10**6), ("/hang", 0)):
            self.routes[path] = counting(path, failures)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.release.set()
    receiver.close()


def webhook_settings(tmp_path: Path, receiver: LocalHttp) -> Settings:
    return Settings(
        data_dir=tmp_path,
        url_allow_hosts=f"127.0.0.1:{receiver.port}",
        webhook_backoff_s=BACKOFF_S,
        webhook_backoff_max_s=5,
        webhook_max_attempts=MAX_ATTEMPTS,
        webhook_timeout_s=5,
    )


def make_outbox(kind: str, settings: Settings, request: pytest.FixtureRequest) -> tuple[Outbox, ApiKeyStore]:
    fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), settings.webhook_timeout_s, 0)
    if kind == "sqlite":
        db = Database(settings.gateway_db)
        keys: ApiKeyStore = KeyStore(db)
        return WebhookOutbox(db, keys, fetcher, settings, Metrics()), keys
    client: redis.Redis = request.getfixturevalue("client")
    keys = RedisKeyStore(client)
    return RedisWebhookOutbox(client, keys, fetcher, settings, Metrics()), keys


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_outboxes_sign_retry_with_backoff_and_give_up_alike(
    kind: str, tmp_path: Path, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    outbox, keys = make_outbox(kind, webhook_settings(tmp_path, receiver), request)
    secret = keys.create("acme").webhook_secret
    flaky = outbox.add("job_1", "acme", f"{receiver.url}/flaky", {"type": "tryon.succeeded"})
    outbox.add("job_2", "acme", f"{receiver.url}/down", {"type": "tryon.failed"})
    assert outbox.state("job_1") == outbox.state("job_2") == DeliveryState("pending", 0, None)
    outbox.start()
    try:
        assert wait_until(lambda: getattr(outbox.state("job_2"), "status", None) == "failed", 20)
        assert wait_until(lambda: getattr(outbox.state("job_1"), "status", None) == "delivered", 20)
    finally:
        outbox.stop()
    delivered, failed = outbox.state("job_1"), outbox.state("job_2")
    assert delivered is not None and (delivered.attempts, delivered.last_error) == (3, None)
    assert failed is not None and (failed.attempts, failed.last_error) == (MAX_ATTEMPTS, "HTTP 500")

    attempts = receiver.requests_to("/flaky")
    assert len(attempts) == 3 and {a.headers["fitroom-event-id"] for a in attempts} == {flaky}
    assert json.loads(attempts[0].body) == {"id": flaky, "type": "tryon.succeeded"}
    assert all(verify_signature(secret, a.headers["fitroom-signature"], a.body) for a in attempts)
    assert attempts[1].at - attempts[0].at >= BACKOFF_S * 0.9
    assert attempts[2].at - attempts[1].at >= 2 * BACKOFF_S * 0.9  # exponential
    assert len(receiver.requests_to("/down")) == MAX_ATTEMPTS

    outbox.delete_for_job("job_1")
    assert outbox.state("job_1") is None and outbox.state("job_2") is not None


def test_two_dispatchers_send_each_event_once(
    tmp_path: Path, receiver: Receiver, redis_proc: RedisProcess, client: redis.Redis
) -> None:
    settings = webhook_settings(tmp_path, receiver)
    RedisKeyStore(client).create("acme")
    replicas = []
    for _ in range(2):  # two gateway replicas: their own connections, fetchers and metrics
        own = connect(redis_proc.url)
        fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), 5, 0)
        replicas.append(RedisWebhookOutbox(own, RedisKeyStore(own), fetcher, settings, Metrics()))
    for replica in replicas:
        replica.start()
    try:
        # Queued by a stage worker: no dispatcher in its process, nobody woken.
        events = [queue_webhook(client, f"job_{i}", "acme", f"{receiver.url}/ok", {"n": i}) for i in range(40)]
        assert wait_until(lambda: len(receiver.requests_to("/ok")) >= 40, 20)
        time.sleep(0.5)  # time enough for a duplicate to show up
    finally:
        for replica in replicas:
            replica.stop()
    sent = [r.headers["fitroom-event-id"] for r in receiver.requests_to("/ok")]
    assert sorted(sent) == sorted(events)  # each exactly once
    states = [replicas[0].state(f"job_{i}") for i in range(40)]
    assert all(s is not None and (s.status, s.attempts) == ("delivered", 1) for s in states)
    assert client.zcard("fitroom:webhooks:due") == 0


_DISPATCHER = """
import sys, time
from services.common.config import Settings
from services.gateway.fetch import SafeFetcher, UrlPolicy
from services.gateway.metrics import Metrics
from services.gateway.redis_state import RedisKeyStore, connect
from services.gateway.redis_webhooks import RedisWebhookOutbox

url, allow, lease_s = sys.argv[1:]
client = connect(url)
settings = Settings(url_allow_hosts=allow, webhook_timeout_s=30)
fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), 30, 0)
RedisWebhookOutbox(client, RedisKeyStore(client), fetcher, settings, Metrics(), lease_s=float(lease_s)).start()
time.sleep(120)
"""


def test_a_dispatcher_killed_mid_send_leaves_the_delivery_to_another_after_its_lease(
    tmp_path: Path, receiver: Receiver, redis_proc: RedisProcess, client: redis.Redis
) -> None:
    lease_s = 2.0
    secret = RedisKeyStore(client).create("acme").webhook_secret
    event_id = queue_webhook(client, "job_1", "acme", f"{receiver.url}/hang", {"type": "tryon.succeeded"})
    doomed = subprocess.Popen(
        [sys.executable, "-c", _DISPATCHER, redis_proc.url, f"127.0.0.1:{receiver.port}", str(lease_s)],
        cwd=PROJECT_ROOT,
    )
    try:
        assert wait_until(lambda: len(receiver.requests_to("/hang")) == 1, 30)  # claimed, and sending
    finally:
        doomed.kill()
        doomed.wait()
    claimed_at = receiver.requests_to("/hang")[0].at

    settings = webhook_settings(tmp_path, receiver)
    fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), 5, 0)
    survivor = RedisWebhookOutbox(client, RedisKeyStore(client), fetcher, settings, Metrics(), lease_s=lease_s)
    survivor.start()
    try:
        assert wait_until(lambda: getattr(survivor.state("job_1"), "status", None) == "delivered", 15)
    finally:
        survivor.stop()
    first, second = receiver.requests_to("/hang")
    assert second.at - claimed_at >= lease_s * 0.9  # not before the dead one's lease ran out
    assert first.headers["fitroom-event-id"] == second.headers["fitroom-event-id"] == event_id
    assert verify_signature(secret, second.headers["fitroom-signature"], second.body)
    assert survivor.state("job_1") == DeliveryState("delivered", 1, None)  # the dead one never recorded its try


def test_a_dispatcher_outlives_redis_going_away(tmp_path: Path, receiver: Receiver) -> None:
    with redis_server(tmp_path / "redis") as server:
        client = connect(server.url, timeout_s=0.5)
        settings = webhook_settings(tmp_path, receiver)
        fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), 5, 0)
        outbox = RedisWebhookOutbox(client, RedisKeyStore(client), fetcher, settings, Metrics())
        RedisKeyStore(client).create("acme")
        outbox.start()
        try:
            server.kill()
            time.sleep(1.5)
            assert outbox.healthy()
            with pytest.raises(QueueUnavailable):
                outbox.add("job_1", "acme", f"{receiver.url}/ok", {"type": "t"})
            server.start()
            outbox.add("job_1", "acme", f"{receiver.url}/ok", {"type": "t"})
            assert wait_until(lambda: len(receiver.requests_to("/ok")) == 1, 10)
        finally:
            outbox.stop()
        client.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_store_dies_right_after_a_job_finishes_and_its_webhook_still_arrives_once(
    kind: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The moment that once lost webhooks: the job is finished, then the store goes away (Redis
    SIGKILLed, or the embedded gateway's process dies) before anything else runs. The webhook was
    queued with the finish, so it arrives after the restart; the task's redelivery finds the job
    finished and queues no second one."""
    settings = webhook_settings(tmp_path, receiver)
    fetcher = SafeFetcher(UrlPolicy(settings.allowed_url_hosts()), 5, 0)
    with redis_server(tmp_path / "redis") as server:
        if kind == "sqlite":
            db = Database(settings.gateway_db)
            jobs: JobStore = SqliteJobStore(db)
            secret = KeyStore(db).create("acme").webhook_secret
        else:
            client = connect(server.url, timeout_s=0.5)
            jobs = RedisJobStore(client)
            secret = RedisKeyStore(client).create("acme").webhook_secret
        target = jobs.create(job(callback_url=f"{receiver.url}/ok"), 60)
        jobs.start(target.id)

        finished = jobs.finish(target.id, "succeeded", detected_category="upper", webhook=job_webhook(settings))
        if kind == "sqlite":
            db.close()  # the process is gone: only the file is left
            db = Database(settings.gateway_db)
            jobs = SqliteJobStore(db)
            outbox: Outbox = WebhookOutbox(db, KeyStore(db), fetcher, settings, Metrics())
        else:
            server.kill()  # SIGKILL: only the append-only file is left
            server.start()
            outbox = RedisWebhookOutbox(client, RedisKeyStore(client), fetcher, settings, Metrics())

        assert finished is not None and jobs.get("acme", target.id) == finished
        # The task is delivered again (it was never acknowledged): it finds the job finished.
        assert jobs.start(target.id) is None
        assert jobs.finish(target.id, "succeeded", webhook=job_webhook(settings)) is None
        outbox.start()
        try:
            assert wait_until(lambda: len(receiver.requests_to("/ok")) >= 1, 10)
            time.sleep(1.5)  # time enough for a duplicate to show up
        finally:
            outbox.stop()
        assert outbox.state(target.id) == DeliveryState("delivered", 1, None)
    [delivery] = receiver.requests_to("/ok")
    assert verify_signature(secret, delivery.headers["fitroom-signature"], delivery.body)
    event = json.loads(delivery.body)
    assert event["type"] == "tryon.succeeded" and event["data"]["id"] == target.id
    assert event["data"]["status"] == "succeeded" and event["data"]["detected_category"] == "upper"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_reaper_racing_the_worker_queues_the_one_webhook_of_the_winner(
    kind: str, tmp_path: Path, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    settings = webhook_settings(tmp_path, receiver)
    if kind == "sqlite":
        db = Database(settings.gateway_db)
        jobs: JobStore = SqliteJobStore(db)
        count = lambda job_id: db.query("SELECT COUNT(*) FROM webhook_deliveries WHERE job_id = ?", (job_id,))[0][0]  # noqa: E731
    else:
        client: redis.Redis = request.getfixturevalue("client")
        jobs = RedisJobStore(client)
        count = lambda job_id: client.zcard(f"fitroom:webhooks:job:{job_id}")  # noqa: E731
    for _ in range(10):
        target = jobs.create(job(callback_url=f"{receiver.url}/ok"), 60)
        jobs.start(target.id)

        def finish(i: int, job_id: str = target.id) -> Job | None:
            if i % 2:
                return jobs.finish(job_id, "succeeded", webhook=job_webhook(settings))
            return jobs.finish(job_id, "failed", error=("job_timeout", "late"), webhook=job_webhook(settings))

        [winner] = [outcome for outcome in race(6, finish) if outcome is not None]
        assert count(target.id) == 1, winner
