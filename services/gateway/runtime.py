"""The gateway's parts, wired for the mode the settings name.

`Gateway` is what the routes reach through `request.app.state.gateway`. Embedded mode: SQLite
state, local artifacts, pipeline worker threads in this process. Distributed mode: jobs, garments,
keys and webhooks in Redis, artifacts where FITROOM_STORAGE says (S3), jobs sent through Celery to
the stage workers, and a reaper that sends a silent job's next task again and fails jobs stuck past
their deadline. The routes and the
service functions are the same in both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from services.common.artifacts import ArtifactStore, artifact_store
from services.common.config import Settings
from services.common.errors import FitroomError
from services.common.inference import Infer, LocalBackend, embedded_backend
from services.gateway.db import Database
from services.gateway.fetch import SafeFetcher, UrlPolicy
from services.gateway.jobs import GarmentRegistry, Job, JobStore, SqliteGarmentRegistry, SqliteJobStore
from services.gateway.keys import ApiKeyStore, AuthCache, KeyStore
from services.gateway.metrics import Metrics
from services.gateway.persons import (
    Batch,
    BatchStore,
    Person,
    PersonRegistry,
    Settled,
    SqliteBatchStore,
    SqlitePersonRegistry,
)
from services.gateway.queue import JobQueue, ThreadQueue
from services.gateway.storage import TenantArtifactStore, batch_prefix, job_prefix, person_resource_prefix
from services.gateway.webhooks import Outbox, WebhookOutbox
from services.gateway.worker import JobExecutor, settle

log = logging.getLogger("fitroom.gateway")

_PROBE_KEY = "health/probe"
_JANITOR_INTERVAL_S = 60.0
_REAPER_INTERVAL_S = 10.0


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.artifacts: ArtifactStore = artifact_store(settings)
        policy = UrlPolicy(settings.allowed_url_hosts())
        self.fetcher = SafeFetcher(policy, settings.fetch_timeout_s, settings.fetch_max_redirects)
        # Webhooks get their own client: a slow receiver must not hold up image fetches.
        webhook_fetcher = SafeFetcher(policy, settings.webhook_timeout_s, 0)
        # Garment registration analyses on request threads (no model involved): bounded like the workers.
        self.analysis_slots = threading.BoundedSemaphore(settings.workers)
        self.auth_cache = AuthCache(settings.auth_cache_s)
        self.jobs: JobStore
        self.garments: GarmentRegistry
        self.persons: PersonRegistry
        self.batches: BatchStore
        self.keys: ApiKeyStore
        self.outbox: Outbox
        self.queue: JobQueue
        self.infer: Infer
        self._background: list[Callable[[], None]] = [self._janitor_loop]
        if settings.mode == "distributed":
            from services.distributed.queue import CeleryQueue
            from services.distributed.state import distributed_state

            self.state = distributed_state(settings, self.metrics, webhook_fetcher)
            self.jobs, self.garments, self.keys = self.state.jobs, self.state.garments, self.state.keys
            self.persons, self.batches = self.state.persons, self.state.batches
            self.outbox = self.state.outbox
            self.queue = CeleryQueue(self.state.client, settings.queue_size)
            self.infer = LocalBackend(settings.model_repository)  # never loads a model here: the workers do
            self.models_error: str | None = None
            self._check_state: Callable[[], object] = self.state.client.ping
            self._background.append(self._reaper_loop)
        else:
            self.db = Database(settings.gateway_db)
            self.jobs = SqliteJobStore(self.db)
            self.garments = SqliteGarmentRegistry(self.db)
            self.persons = SqlitePersonRegistry(self.db)
            self.batches = SqliteBatchStore(self.db)
            self.keys = KeyStore(self.db)
            self.infer = embedded_backend(settings)
            self.outbox = WebhookOutbox(self.db, self.keys, webhook_fetcher, settings, self.metrics)
            self.executor = JobExecutor(
                self.jobs, self.garments, self.batches, self.artifacts, self.infer, self.outbox, self.metrics, settings
            )
            self.queue = ThreadQueue(self.executor, settings.workers, settings.queue_size)
            self.models_error = "models are loading"
            self._check_state = self.db.ping
        self.metrics.watch(self.jobs.count_by_status, self.queue.depth)
        self._stopping = threading.Event()

    def start(self) -> None:
        """Re-queue what a previous run left unfinished, then start the workers and background threads."""
        recovered = self.jobs.recover()
        if recovered:
            log.info("re-queued %d unfinished job(s) from the previous run", len(recovered))
        self.queue.restore(recovered)
        self.queue.start()
        self.outbox.start()
        for loop in self._background:
            threading.Thread(target=loop, name=f"fitroom{loop.__name__}", daemon=True).start()
        if self.settings.mode == "embedded":
            threading.Thread(target=self._load_models, name="fitroom-warmup", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self.settings.mode == "embedded":
            self.executor.stopping.set()  # running jobs stop at their next stage and go back to the queue
        self.queue.stop(self.settings.shutdown_grace_s)
        self.outbox.stop()
        self.fetcher.close()

    def readiness(self) -> dict[str, str]:
        """Each dependency's state: "ok", or why it is not."""
        checks = {"models": self.models_error or "ok"}
        try:
            self._check_state()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            self.artifacts.put(_PROBE_KEY, b"ok")
            checks["storage"] = "ok" if self.artifacts.get(_PROBE_KEY) == b"ok" else "read back wrong data"
        except Exception as exc:
            checks["storage"] = f"unreachable: {type(exc).__name__}"
        checks["queue"] = "ok" if self.queue.healthy() else "workers are not running"
        checks["webhooks"] = "ok" if self.outbox.healthy() else "the webhook sender is not running"
        return checks

    def _load_models(self) -> None:
        """Load every model of the repository now, so the first job does not pay for it (readyz waits)."""
        start = time.perf_counter()
        repository = self.settings.model_repository
        try:
            names = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
            if not names:
                raise FileNotFoundError(f"no models in {repository}: run `fitroom models build`")
            for name in names:
                self.infer.load(name)
        except (FitroomError, OSError) as exc:
            self.models_error = getattr(exc, "message", str(exc))
            log.error("models unavailable: %s", self.models_error)
            return
        self.models_error = None
        log.info("loaded %d models in %.1f s", len(names), time.perf_counter() - start)

    def _janitor_loop(self) -> None:
        """Erase finished jobs past the retention period (their results are personal data too)."""
        while not self._stopping.wait(_JANITOR_INTERVAL_S):
            if self.settings.job_retention_s <= 0:
                continue
            try:
                self.expire_jobs(time.time() - self.settings.job_retention_s)
            except Exception:
                log.exception("janitor error")

    def _reaper_loop(self) -> None:
        """Distributed mode: send again the next task of a job silent too long, and fail jobs stuck past
        FITROOM_JOB_DEADLINE_S (every replica runs one; both are safe to run twice)."""
        from services.distributed.queue import reap_overdue, resend_stalled

        interval = min(_REAPER_INTERVAL_S, self.settings.job_deadline_s / 4)
        while not self._stopping.wait(interval):
            try:
                resend_stalled(self.state, self.settings)
                reap_overdue(self.state, self.artifacts, self.settings)
            except Exception:
                log.exception("reaper error")

    def expire_jobs(self, cutoff: float) -> int:
        """Erase every batch and job finished before `cutoff`, and every person registered before it;
        returns how many jobs."""
        erased = 0
        while batches := self.batches.finished_before(cutoff):
            for batch in batches:
                erased += self.erase_batch(batch)[0]
        while expired := self.jobs.finished_before(cutoff):
            for job in expired:
                self.erase_job(job)
            erased += len(expired)
        while persons := self.persons.created_before(cutoff):
            for person in persons:
                self.erase_person(person)
        return erased

    def erase_job(self, job: Job) -> int:
        """The job, its inputs, result and webhook, and the cached pose and parse of its photo
        (derived personal data); returns the number of artifacts deleted."""
        store = TenantArtifactStore(self.artifacts, job.tenant)
        self.jobs.delete(job.tenant, job.id)
        self.outbox.delete_for_job(job.id)
        deleted = store.delete_prefix(job_prefix(job.id))
        return deleted + (store.delete_prefix(job.person_prefix) if job.owns_person_cache else 0)

    def erase_person(self, person: Person) -> int:
        """A registered person: the record, the photo and its cached pose and parse; returns the number
        of artifacts deleted. Queued try-ons naming it then fail with person_not_found."""
        store = TenantArtifactStore(self.artifacts, person.tenant)
        self.persons.delete(person.tenant, person.id)
        return store.delete_prefix(person_resource_prefix(person.id)) + store.delete_prefix(person.person_prefix)

    def erase_batch(self, batch: Batch) -> tuple[int, int]:
        """A batch, every job of it (results included), its webhook, and its own photo with that photo's
        cached pose and parse; (jobs, artifacts) deleted. A registered person it ran on stays."""
        store = TenantArtifactStore(self.artifacts, batch.tenant)
        self.batches.delete(batch.tenant, batch.id)
        self.outbox.delete_for_job(batch.id)
        members = self.jobs.get_many(batch.tenant, batch.job_ids)
        deleted = sum(self.erase_job(job) for job in members) + store.delete_prefix(batch_prefix(batch.id))
        if batch.owns_person_cache:
            deleted += store.delete_prefix(batch.person_prefix)
        return len(members), deleted

    def settle_batch(self, tenant: str, batch_id: str) -> Settled:
        """The batch and its jobs, finishing it first if its last job has ended (see persons.settle_batch)."""
        store = TenantArtifactStore(self.artifacts, tenant)
        return settle(self.batches, self.jobs, store, self.outbox, self.settings, tenant, batch_id)
