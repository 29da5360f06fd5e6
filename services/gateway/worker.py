"""Running a job: reading its inputs, recording each stage's progress, storing the result,
finishing it (with its webhook, in one transaction: `job_webhook`) and concluding (inputs erased).
`JobExecutor` runs a whole job in this process (embedded mode); the Celery tasks of
services/distributed run it stage by stage with the same pieces. Every stage's progress goes to
the job store as it happens, so GET /v1/tryon/{id} shows it live. Expected failures (no person,
no garment, ...) fail the job with their code; anything else fails it as internal_error, logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from services.common.artifacts import ArtifactNotFound, ArtifactStore
from services.common.config import Settings
from services.common.contracts import LIP_PALETTE, Category, ParseResult, PoseResult, WarpResult
from services.common.errors import FitroomError, GarmentNotFound
from services.common.imageio import decode_image, decode_image_rgba, encode_jpeg, encode_label_png, encode_png
from services.common.inference import Infer
from services.gateway.errors import PersonNotFound
from services.gateway.jobs import GarmentRegistry, Job, JobStore, StageState, WebhookFor
from services.gateway.metrics import Metrics
from services.gateway.persons import Batch, BatchStore, Settled, settle_batch
from services.gateway.schemas import batch_view, job_view, timestamp
from services.gateway.storage import (
    TenantArtifactStore,
    batch_person_key,
    garment_image_key,
    garment_input_key,
    intermediate_key,
    job_inputs_prefix,
    job_prefix,
    job_work_prefix,
    person_image_key,
    person_input_key,
    result_key,
)
from services.gateway.webhooks import Outbox, Webhook
from services.pipeline import PersonLock, Pipeline

log = logging.getLogger("fitroom.gateway.worker")


class JobInterrupted(Exception):
    """Raised between stages when the server is stopping: the job goes back to the queue."""


def load_person(store: TenantArtifactStore, job: Job) -> np.ndarray:
    """The job's photo: a registered person's, its batch's, or its own."""
    if job.person_id is not None:
        try:
            return decode_image(store.get(person_image_key(job.person_id)))
        except ArtifactNotFound:
            raise PersonNotFound(f"person {job.person_id} was deleted before the job ran") from None
    if job.batch_id is not None:
        return decode_image(store.get(batch_person_key(job.batch_id)))
    return decode_image(store.get(person_input_key(job.id)))


def load_garment(store: TenantArtifactStore, job: Job, garments: GarmentRegistry) -> tuple[np.ndarray, Category | None]:
    """The garment image and the category to analyse it with (None: detect)."""
    if job.garment_id is None:
        image = decode_image_rgba(store.get(garment_input_key(job.id)))
        return image, None if job.category == "auto" else job.category
    garment = garments.get(job.tenant, job.garment_id)
    if garment is None:
        raise GarmentNotFound(f"garment {job.garment_id} was deleted before the job ran")
    image = decode_image_rgba(store.get(garment_image_key(garment.id)))
    # The category it was registered with, so the analysis cached at registration is found.
    requested = garment.requested_category
    return image, None if requested == "auto" else requested


def store_result(store: TenantArtifactStore, job: Job, image: np.ndarray) -> None:
    encoded = encode_jpeg(image) if job.output_format == "jpeg" else encode_png(image)
    store.put(result_key(job.id, job.output_format), encoded)


def store_intermediates(
    store: TenantArtifactStore, job: Job, person: np.ndarray, pose: PoseResult, parse: ParseResult, warped: WarpResult
) -> None:
    """What a job with `intermediates` keeps beside its result, as images a person can look at (the
    CLI's --debug writes the same): erased with the job."""
    from services.pose.overlay import draw_pose

    store.put(intermediate_key(job.id, "pose"), encode_jpeg(draw_pose(person, pose)))
    store.put(intermediate_key(job.id, "parse"), encode_label_png(parse.labels, LIP_PALETTE))
    store.put(intermediate_key(job.id, "warped"), encode_png(np.round(warped.rgba * 255).astype(np.uint8)))


class StageRecorder:
    """The pipeline's on_stage callback: each stage's progress goes to the job store as it happens."""

    def __init__(self, jobs: JobStore, metrics: Metrics | None, job_id: str, stopping: threading.Event | None = None):
        self.jobs = jobs
        self.metrics = metrics
        self.job_id = job_id
        self.stopping = stopping
        self.current: str | None = None  # the stage running now, to mark it failed

    def __call__(self, stage: str, event: str, seconds: float) -> None:
        if event == "running":
            if self.stopping is not None and self.stopping.is_set():
                raise JobInterrupted
            self.current = stage
            self.jobs.set_stage(self.job_id, stage, StageState("running"))
            return
        self.current = None
        if event == "cached":
            if self.metrics:
                self.metrics.stage_cache_hits.labels(stage).inc()
            self.jobs.set_stage(self.job_id, stage, StageState("cached", round(seconds, 4)))
        else:
            if self.metrics:
                self.metrics.stage_seconds.labels(stage).observe(seconds)
            self.jobs.set_stage(self.job_id, stage, StageState("done", round(seconds, 4)))

    def failed(self) -> None:
        if self.current is not None:
            self.jobs.set_stage(self.job_id, self.current, StageState("failed"))


def job_webhook(settings: Settings) -> WebhookFor:
    """What `JobStore.finish` queues for a finished job with a callback_url: the job as GET shows it."""

    def webhook(outcome: Job) -> Webhook | None:
        if not outcome.callback_url:
            return None
        base_url = settings.public_url.rstrip("/") or outcome.base_url
        event = {
            "type": f"tryon.{outcome.status}",
            "created_at": timestamp(outcome.finished_at or time.time()).isoformat(),
            "data": job_view(outcome, base_url).model_dump(mode="json", exclude={"webhook"}),
        }
        return Webhook(outcome.callback_url, event)

    return webhook


def conclude(
    job: Job,
    outcome: Job | None,
    jobs: JobStore,
    store: TenantArtifactStore,
    outbox: Outbox,
    metrics: Metrics | None = None,
) -> None:
    """After `jobs.finish` (which queued the webhook): drop the inputs (personal data), wake the sender.

    `outcome` None means this run did not finish the job: it was deleted meanwhile, or something else
    finished it first (a reaper, or another delivery of the same task, still running when the job
    ended). What this run wrote is then tidied to what the job's end keeps: nothing once deleted,
    nothing once failed, only the result once succeeded. A crash before this runs leaves the inputs
    to the janitor, which erases a finished job's files after its retention.
    """
    if outcome is None:
        current = jobs.get(job.tenant, job.id)
        if current is None:
            store.delete_prefix(job_prefix(job.id))
            if job.owns_person_cache:
                store.delete_prefix(job.person_prefix)
        elif current.status == "failed":
            store.delete_prefix(job_prefix(job.id))
        elif current.status == "succeeded":
            store.delete_prefix(job_inputs_prefix(job.id))
            store.delete_prefix(job_work_prefix(job.id))
        return
    if outcome.callback_url:
        outbox.wake()
    # Photos are personal data: keep them, and what was made from them on the way, no longer than needed.
    store.delete_prefix(job_inputs_prefix(job.id))
    store.delete_prefix(job_work_prefix(job.id))
    if metrics:
        metrics.jobs_finished.labels(outcome.status, outcome.error_code or "").inc()


def batch_webhook(settings: Settings) -> Callable[[Batch, list[Job]], Webhook | None]:
    """What `BatchStore.finish` queues for a finished batch with a callback_url: the batch as GET shows it."""

    def webhook(batch: Batch, members: list[Job]) -> Webhook | None:
        if not batch.callback_url:
            return None
        base_url = settings.public_url.rstrip("/") or batch.base_url
        event = {
            "type": "batch.finished",
            "created_at": timestamp(batch.finished_at or time.time()).isoformat(),
            "data": batch_view(batch, members, base_url).model_dump(mode="json", exclude={"webhook"}),
        }
        return Webhook(batch.callback_url, event)

    return webhook


def settle(
    batches: BatchStore,
    jobs: JobStore,
    store: TenantArtifactStore,
    outbox: Outbox,
    settings: Settings,
    tenant: str,
    batch_id: str,
) -> Settled:
    """The batch and its jobs, the batch finished when its last job has ended (its webhook queued, and
    its own photo, which no job needs any more, dropped). Any process may call it, any number of times."""
    settled = settle_batch(batches, jobs, tenant, batch_id, batch_webhook(settings))
    if settled.ended_now and settled.batch is not None:
        if settled.batch.callback_url:
            outbox.wake()
        store.delete_prefix(batch_person_key(settled.batch.id))
    return settled


def job_ended_in_batch(
    job: Job, batches: BatchStore, jobs: JobStore, store: TenantArtifactStore, outbox: Outbox, settings: Settings
) -> None:
    """After a job has finished: if it was its batch's last, the batch ends."""
    if job.batch_id is not None:
        settle(batches, jobs, store, outbox, settings, job.tenant, job.batch_id)


class JobExecutor:
    """Embedded mode's worker: one job through the whole pipeline in this process."""

    def __init__(
        self,
        jobs: JobStore,
        garments: GarmentRegistry,
        batches: BatchStore,
        artifacts: ArtifactStore,
        infer: Infer,
        outbox: Outbox,
        metrics: Metrics,
        settings: Settings,
        person_lock: PersonLock | None = None,
    ) -> None:
        self.jobs = jobs
        self.garments = garments
        self.batches = batches
        self.person_lock = person_lock
        self.artifacts = artifacts
        self.infer = infer
        self.outbox = outbox
        self.metrics = metrics
        self.settings = settings
        self.stopping = threading.Event()  # set by the queue's owner at shutdown

    def __call__(self, job_id: str) -> None:
        job = self.jobs.claim(job_id)
        if job is None:
            return  # deleted, or already taken
        store = TenantArtifactStore(self.artifacts, job.tenant)
        recorder = StageRecorder(self.jobs, self.metrics, job.id, self.stopping)
        webhook = job_webhook(self.settings)
        try:
            garment, category = load_garment(store, job, self.garments)
            person = load_person(store, job)
            pipeline = Pipeline(store, self.infer, self.settings.learned or None, self.person_lock)
            result = pipeline.tryon(person, garment, category, on_stage=recorder)
            if job.intermediates:
                store_intermediates(store, job, person, result.pose, result.parse, result.warped)
            store_result(store, job, result.image)
            outcome = self.jobs.finish(job.id, "succeeded", detected_category=result.category, webhook=webhook)
        except JobInterrupted:
            self.jobs.requeue(job.id)
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            return
        except FitroomError as exc:
            recorder.failed()
            outcome = self.jobs.finish(job.id, "failed", error=(exc.code, exc.message), webhook=webhook)
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            recorder.failed()
            error = ("internal_error", "internal error; it has been logged")
            outcome = self.jobs.finish(job.id, "failed", error=error, webhook=webhook)
        conclude(job, outcome, self.jobs, store, self.outbox, self.metrics)
        job_ended_in_batch(job, self.batches, self.jobs, store, self.outbox, self.settings)
