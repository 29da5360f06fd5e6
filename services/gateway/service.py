"""What the routes do, beyond HTTP: submit a try-on, register a garment, erase data.

All of it but wait_for_job blocks (decoding, fetching, SQLite): sync routes call it, which
FastAPI runs on its thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from anyio import to_thread

from services.common.errors import CategoryInvalid, GarmentNotFound, IdempotencyConflict, QueueFull, UrlForbidden
from services.gateway.inputs import GarmentSubmission, TryonSubmission, load_image
from services.gateway.jobs import Garment, IdempotencyKeyTaken, Job, new_garment_id, new_job_id
from services.gateway.runtime import Gateway
from services.gateway.storage import (
    TenantArtifactStore,
    garment_image_key,
    garment_input_key,
    garment_prefix,
    job_prefix,
    person_input_key,
)
from services.pipeline import Pipeline, person_prefix
from services.warp import cache as garment_cache


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an earlier request with the same Idempotency-Key made it


def submit_tryon(
    gateway: Gateway, tenant: str, submission: TryonSubmission, idempotency_key: str | None, base_url: str
) -> Submitted:
    """Check the inputs, store them and queue the job; or return the job an identical request made."""
    fingerprint = submission.fingerprint()
    if idempotency_key is not None:
        previous = _idempotent_job(gateway, tenant, idempotency_key, fingerprint)
        if previous is not None:
            return Submitted(previous, replayed=True)
    if gateway.queue.full():  # refuse before the expensive part (queue.submit checks again, atomically)
        raise QueueFull("all workers are busy and the queue is full; retry after Retry-After seconds")
    fields = submission.fields
    if fields.garment_id is not None:
        garment = gateway.garments.get(tenant, fields.garment_id)
        if garment is None:
            raise GarmentNotFound(f"no garment {fields.garment_id}")
        if fields.category not in ("auto", garment.category):
            raise CategoryInvalid(f"garment {garment.id} is registered as {garment.category}, not {fields.category}")
    if fields.callback_url is not None:
        check_callback_url(gateway, fields.callback_url)
    settings = gateway.settings
    limits = {"max_bytes": settings.max_image_bytes, "max_pixels": settings.max_image_pixels}
    person = load_image(submission.person, gateway.fetcher, rgba=False, **limits)
    garment_image = load_image(submission.garment, gateway.fetcher, rgba=True, **limits) if submission.garment else None

    store = TenantArtifactStore(gateway.artifacts, tenant)
    job = Job(
        id=new_job_id(),
        tenant=tenant,
        category=fields.category,
        output_format=fields.output_format,
        person_prefix=person_prefix(person.pixels),
        base_url=base_url,
        garment_id=fields.garment_id,
        shopper_id=fields.shopper_id,
        callback_url=fields.callback_url,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    try:
        store.put(person_input_key(job.id), person.data)
        if garment_image is not None:
            store.put(garment_input_key(job.id), garment_image.data)
        try:
            gateway.jobs.create(job, settings.idempotency_ttl_s)
        except IdempotencyKeyTaken as taken:  # a concurrent request with the same key won the race
            store.delete_prefix(job_prefix(job.id))
            return Submitted(_same_request(taken.existing, fingerprint), replayed=True)
        gateway.queue.submit(job.id)
    except BaseException:
        # Nothing of a refused submission stays behind (QueueFull, a storage or database error).
        gateway.jobs.delete(tenant, job.id)
        store.delete_prefix(job_prefix(job.id))
        raise
    return Submitted(job, replayed=False)


def check_callback_url(gateway: Gateway, url: str) -> None:
    """Refuse now what the webhook sender would refuse later (scheme, credentials, a private
    literal address); the resolved address is checked again at every delivery."""
    try:
        gateway.fetcher.policy.check(url)
    except UrlForbidden as exc:
        raise UrlForbidden(f"callback_url: {exc.message}") from None


def _idempotent_job(gateway: Gateway, tenant: str, key: str, fingerprint: str) -> Job | None:
    job = gateway.jobs.by_idempotency_key(tenant, key, gateway.settings.idempotency_ttl_s)
    return None if job is None else _same_request(job, fingerprint)


def _same_request(job: Job, fingerprint: str) -> Job:
    if job.request_hash != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request; use a new key")
    return job


async def wait_for_job(gateway: Gateway, tenant: str, job_id: str, wait_s: float) -> Job | None:
    """The job, once finished or after wait_s seconds, whichever comes first (long-poll)."""
    deadline = time.monotonic() + min(wait_s, gateway.settings.max_wait_s)
    job = await to_thread.run_sync(gateway.jobs.get, tenant, job_id)
    # Polling the store works the same when workers live in other processes (distributed mode).
    while job is not None and not job.finished and time.monotonic() < deadline:
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        job = await to_thread.run_sync(gateway.jobs.get, tenant, job_id)
    return job


def erase_shopper(gateway: Gateway, tenant: str, shopper_id: str) -> tuple[int, int]:
    """Every job tagged with shopper_id, and their photos' cached data: (jobs, artifacts) deleted."""
    jobs = gateway.jobs.of_shopper(tenant, shopper_id)
    return len(jobs), sum(gateway.erase_job(job) for job in jobs)


def register_garment(gateway: Gateway, tenant: str, submission: GarmentSubmission) -> Garment:
    """Decode and analyse the garment now (a bad product image is a 4xx here, not a failed job
    later); the analysis is cached, so every try-on naming the garment reuses it."""
    settings = gateway.settings
    image = load_image(
        submission.image,
        gateway.fetcher,
        rgba=True,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    requested = submission.fields.category
    category = None if requested == "auto" else requested
    store = TenantArtifactStore(gateway.artifacts, tenant)
    with gateway.analysis_slots:  # analyses run on request threads: no more at once than there are workers
        analysis = Pipeline(store, gateway.infer).garment(image.pixels, category)
    garment = Garment(
        id=new_garment_id(),
        tenant=tenant,
        category=analysis.category,
        category_confidence=analysis.category_confidence,
        requested_category=requested,
        width=analysis.image_width,
        height=analysis.image_height,
        cache_prefix=garment_cache.garment_prefix(image.pixels),
        sku=submission.fields.sku,
    )
    store.put(garment_image_key(garment.id), image.data)
    gateway.garments.add(garment)
    return garment


def delete_garment(gateway: Gateway, garment: Garment) -> None:
    store = TenantArtifactStore(gateway.artifacts, garment.tenant)
    gateway.garments.delete(garment.tenant, garment.id)
    store.delete_prefix(garment_prefix(garment.id))
    store.delete_prefix(garment.cache_prefix)
