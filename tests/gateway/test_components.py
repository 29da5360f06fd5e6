"""The gateway's parts on their own, in-process: the SSRF policy, the job store, the queue, the
tenant store and the error mapping. (The API tests cover them again through the real server.)"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from services.common.artifacts import LocalArtifactStore
from services.common.config import Settings
from services.common.errors import CategoryInvalid, QueueFull, RequestInvalid, UrlFetchFailed, UrlForbidden
from services.gateway.db import MIGRATIONS, Database
from services.gateway.errors import from_validation_errors
from services.gateway.fetch import SafeFetcher, UrlPolicy
from services.gateway.jobs import (
    Job,
    SqliteGarmentRegistry,
    SqliteJobStore,
    StageState,
    is_garment_id,
    is_job_id,
    new_job_id,
)
from services.gateway.keys import AuthCache, KeyStore
from services.gateway.metrics import Metrics
from services.gateway.queue import ThreadQueue
from services.gateway.storage import TenantArtifactStore
from tests.gateway.helpers import LocalHttp, reply


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://127.1.2.3/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://printer.local/",
        "https://metadata.google.internal/",
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://192.168.0.1/",
        "https://169.254.169.254/",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://[::1]/",
        "https://[::]/",
        "https://[fc00::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://224.0.0.1/",
        "http://example.com/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "https://user@example.com/",
        "https:///nohost",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/" + "a" * 3000,
    ],
)
def test_policy_refuses(url: str) -> None:
    with pytest.raises(UrlForbidden):
        UrlPolicy().check(url)


def test_policy_accepts_public_https() -> None:
    target = UrlPolicy().check("https://cdn.example.com:8443/a.jpg?sig=1")
    assert (target.scheme, target.host, target.port, target.allowlisted) == ("https", "cdn.example.com", 8443, False)


def test_resolved_addresses_are_checked_not_just_the_name() -> None:
    # A name that resolves to loopback (as a rebinding DNS answer would) is refused after resolution.
    with pytest.raises(UrlForbidden, match="non-public"):
        UrlPolicy().resolve("2130706433", 443)  # inet_aton's decimal form of 127.0.0.1
    with pytest.raises(UrlFetchFailed):
        UrlPolicy().resolve("no-such-host.invalid", 443)


def test_allow_listed_host_may_use_http_and_loopback() -> None:
    host = LocalHttp({"/x.png": reply(200, b"PNGDATA", "image/png")})
    try:
        allowed = SafeFetcher(UrlPolicy(frozenset({f"127.0.0.1:{host.port}"})), timeout_s=5, max_redirects=0)
        assert allowed.get_image(f"{host.url}/x.png", max_bytes=100) == b"PNGDATA"
        refused = SafeFetcher(UrlPolicy(), timeout_s=5, max_redirects=0)
        with pytest.raises(UrlForbidden):
            refused.get_image(f"{host.url}/x.png", max_bytes=100)
        # Another port of the same host is not allow-listed.
        with pytest.raises(UrlForbidden):
            allowed.get_image(f"http://127.0.0.1:{host.port + 1}/x.png", max_bytes=100)
    finally:
        host.close()
    assert len(host.received) == 1  # the refused fetches never connected


def job(store_id: str = "", **fields: object) -> Job:
    return Job(
        id=store_id or new_job_id(),
        tenant=str(fields.pop("tenant", "acme")),
        category="auto",
        output_format="jpeg",
        person_prefix="person/abc/",
        base_url="http://x",
        **fields,  # type: ignore[arg-type]
    )


def test_job_store_claims_once_and_recovers_running_jobs(tmp_path: Path) -> None:
    store = SqliteJobStore(Database(tmp_path / "db.sqlite3"))
    first, second = store.create(job(), 60), store.create(job(), 60)
    claimed = store.claim(first.id)
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert store.claim(first.id) is None  # a second worker cannot take it
    store.set_stage(first.id, "pose", StageState("done", 0.5))
    assert store.get("acme", first.id).stages["pose"] == StageState("done", 0.5)  # type: ignore[union-attr]
    assert store.get("globex", first.id) is None

    # A new process on the same file: the running job is queued again, oldest first.
    reopened = SqliteJobStore(Database(tmp_path / "db.sqlite3"))
    assert reopened.recover() == [first.id, second.id]
    again = reopened.claim(first.id)
    assert again is not None and again.attempts == 2 and again.stages["pose"].status == "pending"
    finished = reopened.finish(first.id, "failed", error=("no_person_detected", "none"))
    assert finished is not None and finished.error_code == "no_person_detected" and finished.finished_at
    assert reopened.delete("acme", second.id) is not None
    assert reopened.finish(second.id, "succeeded") is None  # deleted meanwhile: the worker must clean up


def test_a_run_that_lost_the_race_leaves_what_the_jobs_end_keeps(tmp_path: Path) -> None:
    """A duplicate task still running when its job ended wrote an intermediate (and, for the last
    stage, a result): conclude(outcome=None) leaves only what the job's end keeps."""
    from services.gateway.storage import job_work_prefix, person_input_key, result_key
    from services.gateway.webhooks import WebhookOutbox
    from services.gateway.worker import conclude

    db = Database(tmp_path / "db.sqlite3")
    jobs = SqliteJobStore(db)
    keys = KeyStore(db)
    outbox = WebhookOutbox(db, keys, SafeFetcher(UrlPolicy(frozenset()), 1, 0), Settings(data_dir=tmp_path), Metrics())
    store = TenantArtifactStore(LocalArtifactStore(tmp_path / "artifacts"), "acme")
    for end in ("succeeded", "failed", "deleted"):
        late = jobs.create(job(), 60)
        jobs.claim(late.id)
        if end == "deleted":
            jobs.delete("acme", late.id)
        else:
            jobs.finish(late.id, end)  # type: ignore[arg-type]
        late_writes = [person_input_key(late.id), f"{job_work_prefix(late.id)}warped.npz", result_key(late.id, "jpeg")]
        for key in late_writes:
            store.put(key, b"late")
        conclude(late, None, jobs, store, outbox)
        kept = [result_key(late.id, "jpeg")] if end == "succeeded" else []
        assert [k for k in late_writes if store.exists(k)] == kept, end


def test_idempotency_keys_expire(tmp_path: Path) -> None:
    from services.gateway.jobs import IdempotencyKeyTaken

    store = SqliteJobStore(Database(tmp_path / "db.sqlite3"))
    old = store.create(job(idempotency_key="k", created_at=time.time() - 100), 60)
    assert store.by_idempotency_key("acme", "k", 60) is None  # older than the ttl
    fresh = store.create(job(idempotency_key="k"), 60)  # takes the key over
    assert store.by_idempotency_key("acme", "k", 60).id == fresh.id  # type: ignore[union-attr]
    assert store.get("acme", old.id) is not None  # the old job stays; only its key went
    with pytest.raises(IdempotencyKeyTaken):
        store.create(job(idempotency_key="k"), 60)
    assert store.create(job(idempotency_key="k", tenant="globex"), 60)  # keys are per tenant


def test_thread_queue_is_bounded_and_restores_past_the_bound() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def run(job_id: str) -> None:
        started.set()
        release.wait(5)
        ran.append(job_id)

    queue = ThreadQueue(run, workers=1, max_depth=1)
    queue.start()
    queue.submit("a")
    assert started.wait(5)  # "a" is running; the queue is empty again
    queue.submit("b")
    assert queue.full() and queue.depth() == 1
    with pytest.raises(QueueFull):
        queue.submit("c")
    queue.restore(["d", "e"])  # recovered jobs were accepted before: they go in regardless
    assert queue.depth() == 3
    release.set()
    deadline = time.monotonic() + 5
    while len(ran) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["a", "b", "d", "e"]
    queue.stop(grace_s=5)
    assert not queue.healthy()
    with pytest.raises(QueueFull):
        queue.submit("f")


def test_tenant_store_keeps_tenants_apart(tmp_path: Path) -> None:
    base = LocalArtifactStore(tmp_path)
    acme, globex = TenantArtifactStore(base, "acme"), TenantArtifactStore(base, "globex")
    acme.put("jobs/j/result.jpg", b"A")
    assert acme.list("jobs/") == ["jobs/j/result.jpg"] and globex.list("jobs/") == []
    assert not globex.exists("jobs/j/result.jpg")
    assert base.list() == ["tenants/acme/jobs/j/result.jpg"]
    for key in ("../globex/jobs/j/result.jpg", "/etc/passwd", "jobs/../../x"):
        with pytest.raises(ValueError):
            acme.get(key)
    with pytest.raises(ValueError):
        TenantArtifactStore(base, "../acme")


def test_keys_are_stored_hashed_and_bound_to_a_tenant(tmp_path: Path) -> None:
    keys = KeyStore(Database(tmp_path / "db.sqlite3"))
    first, second = keys.create("acme"), keys.create("acme", "backup")
    assert first.key != second.key and first.webhook_secret == second.webhook_secret  # one secret per tenant
    assert keys.authenticate(first.key) == "acme" and keys.authenticate(first.key + "x") is None
    assert keys.revoke(first.id) and keys.authenticate(first.key) is None and keys.authenticate(second.key) == "acme"
    assert first.key.encode() not in (tmp_path / "db.sqlite3").read_bytes()
    with pytest.raises(ValueError):
        keys.create("Acme Corp")
    assert keys.rotate_webhook_secret("acme") != first.webhook_secret


def test_the_auth_cache_remembers_a_tenant_for_its_ttl_only() -> None:
    cache = AuthCache(ttl_s=0.3)
    assert cache.get("fr_a") is None
    cache.put("fr_a", "acme")
    assert cache.get("fr_a") == "acme" and cache.get("fr_b") is None
    assert "fr_a" not in str(cache._tenants)  # held by hash, as in the store
    time.sleep(0.35)
    assert cache.get("fr_a") is None  # a revoked key is refused once this has passed
    off = AuthCache(ttl_s=0)
    off.put("fr_a", "acme")
    assert off.get("fr_a") is None


def test_ids_are_strict() -> None:
    assert is_job_id(new_job_id()) and not is_job_id("job_" + "g" * 32) and not is_job_id("job_../x")
    assert not is_garment_id(new_job_id())


def test_validation_errors_map_to_codes() -> None:
    category = from_validation_errors([{"loc": ("body", "category"), "msg": "bad", "type": "literal_error"}])
    assert isinstance(category, CategoryInvalid)
    unknown = from_validation_errors([{"loc": ("body", "colour"), "msg": "extra", "type": "extra_forbidden"}])
    assert isinstance(unknown, RequestInvalid) and "unknown field 'colour'" in unknown.message


def test_finished_jobs_are_erased_after_the_retention_period(tmp_path: Path) -> None:
    from services.common.config import Settings
    from services.gateway.runtime import Gateway
    from services.gateway.storage import result_key

    gateway = Gateway(Settings(data_dir=tmp_path))  # not started: no threads, no models
    store = TenantArtifactStore(gateway.artifacts, "acme")
    old, recent, running = job(), job(), job()
    for item in (old, recent, running):
        gateway.jobs.create(item, 60)
        gateway.jobs.claim(item.id)
        store.put(result_key(item.id, "jpeg"), b"jpeg")
    store.put("person/abc/v1/pose.json", b"{}")  # the cached pose of their photo
    gateway.jobs.finish(old.id, "succeeded")
    cutoff = time.time()
    gateway.jobs.finish(recent.id, "succeeded")
    assert gateway.expire_jobs(cutoff) == 1
    assert gateway.jobs.get("acme", old.id) is None and not store.exists(result_key(old.id, "jpeg"))
    assert not store.exists("person/abc/v1/pose.json")
    assert gateway.jobs.get("acme", recent.id) is not None and store.exists(result_key(recent.id, "jpeg"))
    assert gateway.jobs.get("acme", running.id) is not None  # unfinished jobs are never expired


def test_a_database_of_the_first_schema_is_migrated_and_keeps_its_garments(tmp_path: Path) -> None:
    """A gateway upgraded over an existing file: the garments registered before category
    confidence existed read back with confidence 1 (their category was detected or given then)."""
    path = tmp_path / "db.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version = 1;")
    old.execute(
        "INSERT INTO garments (id, tenant, created_at, category, requested_category, width, height, sku, cache_prefix)"
        " VALUES ('gar_old', 'acme', 1.0, 'lower', 'auto', 600, 600, NULL, 'garments/x')"
    )
    old.commit()
    old.close()
    db = Database(path)
    assert db.query("PRAGMA user_version")[0][0] == len(MIGRATIONS)
    garment = SqliteGarmentRegistry(db).get("acme", "gar_old")
    assert garment is not None and (garment.category, garment.category_confidence) == ("lower", 1.0)
