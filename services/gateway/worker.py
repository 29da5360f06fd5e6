"""Running one job: the worker side of the gateway, the same for every queue implementation.

A worker claims the job (queued -> running), reads its inputs from the tenant's store, drives the
embedded pipeline, stores the result and records the outcome; every stage's progress goes to the
job store as it happens, so GET /v1/tryon/{id} shows it live. Expected failures (no person, no
garment, ...) fail the job with their code; anything else fails it as internal_error, logged.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from services.common.artifacts import ArtifactStore
from services.common.config import Settings
from services.common.contracts import Category
from services.common.errors import FitroomError, GarmentNotFound
from services.common.imageio import decode_image, decode_image_rgba, encode_jpeg, encode_png
from services.common.inference import Infer
from services.gateway.jobs import GarmentRegistry, Job, JobStore, StageState
from services.gateway.metrics import Metrics
from services.gateway.schemas import job_view, timestamp
from services.gateway.storage import (
    TenantArtifactStore,
    garment_image_key,
    garment_input_key,
    job_inputs_prefix,
    job_prefix,
    person_input_key,
    result_key,
)
from services.gateway.webhooks import WebhookOutbox
from services.pipeline import Pipeline

log = logging.getLogger("fitroom.gateway.worker")


class JobInterrupted(Exception):
    """Raised between stages when the server is stopping: the job goes back to the queue."""


class JobExecutor:
    def __init__(
        self,
        jobs: JobStore,
        garments: GarmentRegistry,
        artifacts: ArtifactStore,
        infer: Infer,
        outbox: WebhookOutbox,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.jobs = jobs
        self.garments = garments
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
        current: list[str] = []  # the stage running now, to mark it failed
        try:
            image, category = self._run(job, store, current)
            store.put(result_key(job.id, job.output_format), image)
            outcome = self.jobs.finish(job.id, "succeeded", detected_category=category)
        except JobInterrupted:
            self.jobs.requeue(job.id)
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            return
        except FitroomError as exc:
            self._fail_stage(job.id, current)
            outcome = self.jobs.finish(job.id, "failed", error=(exc.code, exc.message))
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            self._fail_stage(job.id, current)
            outcome = self.jobs.finish(job.id, "failed", error=("internal_error", "internal error; it has been logged"))
        if outcome is None:  # deleted while it ran: erase what the run wrote after the deletion
            store.delete_prefix(job_prefix(job.id))
            store.delete_prefix(job.person_prefix)
            return
        store.delete_prefix(job_inputs_prefix(job.id))  # photos are personal data: keep them no longer than needed
        self.metrics.jobs_finished.labels(outcome.status, outcome.error_code or "").inc()
        if outcome.callback_url:
            base_url = self.settings.public_url.rstrip("/") or outcome.base_url
            event = {
                "type": f"tryon.{outcome.status}",
                "created_at": timestamp(outcome.finished_at or time.time()).isoformat(),
                "data": job_view(outcome, base_url).model_dump(mode="json", exclude={"webhook"}),
            }
            self.outbox.add(outcome.id, outcome.tenant, outcome.callback_url, event)

    def _run(self, job: Job, store: TenantArtifactStore, current: list[str]) -> tuple[bytes, Category]:
        person = decode_image(store.get(person_input_key(job.id)))
        garment, category = self._garment(job, store)

        def on_stage(stage: str, event: str, seconds: float) -> None:
            if event == "running":
                if self.stopping.is_set():
                    raise JobInterrupted
                current[:] = [stage]
                self.jobs.set_stage(job.id, stage, StageState("running"))
                return
            current.clear()
            if event == "cached":
                self.metrics.stage_cache_hits.labels(stage).inc()
                self.jobs.set_stage(job.id, stage, StageState("cached", round(seconds, 4)))
            else:
                self.metrics.stage_seconds.labels(stage).observe(seconds)
                self.jobs.set_stage(job.id, stage, StageState("done", round(seconds, 4)))

        result = Pipeline(store, self.infer).tryon(person, garment, category, on_stage=on_stage)
        encoded = encode_jpeg(result.image) if job.output_format == "jpeg" else encode_png(result.image)
        return encoded, result.category

    def _garment(self, job: Job, store: TenantArtifactStore) -> tuple[np.ndarray, Category | None]:
        """The garment image and the category to analyse it with (None: detect)."""
        if job.garment_id is None:
            image = decode_image_rgba(store.get(garment_input_key(job.id)))
            return image, None if job.category == "auto" else job.category
        garment = self.garments.get(job.tenant, job.garment_id)
        if garment is None:
            raise GarmentNotFound(f"garment {job.garment_id} was deleted before the job ran")
        image = decode_image_rgba(store.get(garment_image_key(garment.id)))
        # The category it was registered with, so the analysis cached at registration is found.
        requested = garment.requested_category
        return image, None if requested == "auto" else requested

    def _fail_stage(self, job_id: str, current: list[str]) -> None:
        if current:
            self.jobs.set_stage(job_id, current[0], StageState("failed"))
