"""What the routes do, beyond HTTP: submit a try-on, register a garment, erase data.

All of it but wait_for_job blocks (decoding, fetching, SQLite): sync routes call it, which
FastAPI runs on its thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

import numpy as np
from anyio import to_thread
from PIL import Image

from services.common.contracts import Category
from services.common.errors import (
    CategoryInvalid,
    GarmentNotFound,
    IdempotencyConflict,
    PhotoTypeUnsupported,
    QueueFull,
    UrlForbidden,
)
from services.common.imageio import encode_png
from services.gateway.errors import PersonNotFound
from services.gateway.inputs import (
    BatchSubmission,
    GarmentSubmission,
    ImageSource,
    LoadedImage,
    PersonSubmission,
    TryonSubmission,
    load_image,
)
from services.gateway.jobs import Garment, IdempotencyKeyTaken, Job, new_garment_id, new_job_id
from services.gateway.persons import Batch, BatchKeyTaken, Person, Settled, new_batch_id, new_person_id
from services.gateway.runtime import Gateway
from services.gateway.storage import (
    TenantArtifactStore,
    batch_person_key,
    batch_prefix,
    garment_image_key,
    garment_input_key,
    garment_prefix,
    job_prefix,
    person_image_key,
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
        check_garment(gateway, tenant, fields.garment_id, fields.category)
    registered = registered_person(gateway, tenant, fields.person_id) if fields.person_id else None
    if fields.callback_url is not None:
        check_callback_url(gateway, fields.callback_url)
    person = _load_person(gateway, submission.person)
    garment_image = (
        load_image(submission.garment, gateway.fetcher, rgba=True, **_limits(gateway)) if submission.garment else None
    )

    store = TenantArtifactStore(gateway.artifacts, tenant)
    job = Job(
        id=new_job_id(),
        tenant=tenant,
        category=fields.category,
        output_format=fields.output_format,
        person_prefix=registered.person_prefix if registered else person_prefix(_pixels(person)),
        base_url=base_url,
        garment_id=fields.garment_id,
        shopper_id=fields.shopper_id or (registered.shopper_id if registered else None),
        callback_url=fields.callback_url,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        person_id=fields.person_id,
        intermediates=fields.intermediates,
    )
    try:
        if person is not None:
            store.put(person_input_key(job.id), person.data)
        if garment_image is not None:
            store.put(garment_input_key(job.id), garment_image.data)
        try:
            gateway.jobs.create(job, gateway.settings.idempotency_ttl_s)
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


def check_garment(gateway: Gateway, tenant: str, garment_id: str, category: str) -> Garment:
    """The tenant's registered garment, which `category` must not contradict."""
    garment = gateway.garments.get(tenant, garment_id)
    if garment is None:
        raise GarmentNotFound(f"no garment {garment_id[:80]}")
    if category not in ("auto", garment.category):
        raise CategoryInvalid(f"garment {garment.id} is registered as {garment.category}, not {category}")
    return garment


def registered_person(gateway: Gateway, tenant: str, person_id: str) -> Person:
    person = gateway.persons.get(tenant, person_id)
    if person is None:
        raise PersonNotFound(f"no person {person_id[:80]}")
    return person


def _load_person(gateway: Gateway, source: ImageSource | None) -> LoadedImage | None:
    return None if source is None else load_image(source, gateway.fetcher, rgba=False, **_limits(gateway))


def _limits(gateway: Gateway) -> dict[str, int]:
    return {"max_bytes": gateway.settings.max_image_bytes, "max_pixels": gateway.settings.max_image_pixels}


def _pixels(image: LoadedImage | None) -> np.ndarray:
    assert image is not None  # the submission had a photo when it named no person_id
    return image.pixels


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


@dataclass(frozen=True)
class Erased:
    jobs: int = 0
    artifacts: int = 0
    persons: int = 0
    batches: int = 0


def erase_shopper(gateway: Gateway, tenant: str, shopper_id: str) -> Erased:
    """Every batch, job and person tagged with shopper_id, with their photos, results and cached body data."""
    jobs = artifacts = 0
    batches = gateway.batches.of_shopper(tenant, shopper_id)
    for batch in batches:  # first: a batch's jobs go with it
        batch_jobs, batch_artifacts = gateway.erase_batch(batch)
        jobs, artifacts = jobs + batch_jobs, artifacts + batch_artifacts
    loose = gateway.jobs.of_shopper(tenant, shopper_id)
    artifacts += sum(gateway.erase_job(job) for job in loose)
    persons = gateway.persons.of_shopper(tenant, shopper_id)
    artifacts += sum(gateway.erase_person(person) for person in persons)
    return Erased(jobs + len(loose), artifacts, len(persons), len(batches))


def register_person(gateway: Gateway, tenant: str, submission: PersonSubmission) -> Person:
    """Read and check the photo now (a bad image is a 4xx here) and keep it: every try-on naming the
    person reads it from the store, and the first one's pose and parse are cached for the others."""
    image = load_image(submission.image, gateway.fetcher, rgba=False, **_limits(gateway))
    height, width = image.pixels.shape[:2]
    person = Person(
        id=new_person_id(),
        tenant=tenant,
        person_prefix=person_prefix(image.pixels),
        width=width,
        height=height,
        shopper_id=submission.fields.shopper_id,
    )
    store = TenantArtifactStore(gateway.artifacts, tenant)
    store.put(person_image_key(person.id), image.data)
    try:
        gateway.persons.add(person)
    except BaseException:
        gateway.erase_person(person)
        raise
    return person


def submit_batch(
    gateway: Gateway, tenant: str, submission: BatchSubmission, idempotency_key: str | None, base_url: str
) -> tuple[Batch, bool]:
    """Check every input, store them, create the batch and its jobs and queue them all; or return the
    batch an identical request made. (batch, replayed)."""
    fingerprint = submission.fingerprint()
    if idempotency_key is not None:
        previous = gateway.batches.by_idempotency_key(tenant, idempotency_key, gateway.settings.idempotency_ttl_s)
        if previous is not None:
            return _same_batch(previous, fingerprint), True
    if gateway.queue.full():
        raise QueueFull("all workers are busy and the queue is full; retry after Retry-After seconds")
    fields = submission.fields
    for index, garment_id in enumerate(fields.garment_ids):
        try:
            check_garment(gateway, tenant, garment_id, fields.category)
        except (GarmentNotFound, CategoryInvalid) as exc:
            exc.message = f"garment_ids[{index}]: {exc.message}"
            raise
    registered = registered_person(gateway, tenant, fields.person_id) if fields.person_id else None
    if fields.callback_url is not None:
        check_callback_url(gateway, fields.callback_url)
    person = _load_person(gateway, submission.person)
    garments = [load_image(g, gateway.fetcher, rgba=True, **_limits(gateway)) for g in submission.garments]

    batch_id = new_batch_id()
    prefix = registered.person_prefix if registered else person_prefix(_pixels(person))
    shopper_id = fields.shopper_id or (registered.shopper_id if registered else None)
    jobs = [
        Job(
            id=new_job_id(),
            tenant=tenant,
            category=fields.category,
            output_format=fields.output_format,
            person_prefix=prefix,
            base_url=base_url,
            garment_id=garment_id,
            shopper_id=shopper_id,
            person_id=fields.person_id,
            batch_id=batch_id,
            intermediates=fields.intermediates,
        )
        for garment_id in [*fields.garment_ids, *[None] * len(garments)]
    ]
    batch = Batch(
        id=batch_id,
        tenant=tenant,
        job_ids=tuple(job.id for job in jobs),
        category=fields.category,
        output_format=fields.output_format,
        person_prefix=prefix,
        base_url=base_url,
        person_id=fields.person_id,
        shopper_id=shopper_id,
        callback_url=fields.callback_url,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    store = TenantArtifactStore(gateway.artifacts, tenant)
    try:
        if person is not None:
            store.put(batch_person_key(batch_id), person.data)
        for job, image in zip(jobs[len(fields.garment_ids) :], garments, strict=True):
            store.put(garment_input_key(job.id), image.data)
        try:
            gateway.batches.create(batch, gateway.settings.idempotency_ttl_s)
        except BatchKeyTaken as taken:  # a concurrent request with the same key won the race
            for job in jobs:
                store.delete_prefix(job_prefix(job.id))
            store.delete_prefix(batch_prefix(batch_id))
            return _same_batch(taken.existing, fingerprint), True
        for job in jobs:
            gateway.jobs.create(job, gateway.settings.idempotency_ttl_s)
        gateway.queue.submit_many([job.id for job in jobs])
    except BaseException:
        # Nothing of a refused batch stays behind (QueueFull, a storage or database error).
        gateway.batches.delete(tenant, batch_id)
        for job in jobs:
            gateway.jobs.delete(tenant, job.id)
            store.delete_prefix(job_prefix(job.id))
        store.delete_prefix(batch_prefix(batch_id))
        raise
    return batch, False


def _same_batch(batch: Batch, fingerprint: str) -> Batch:
    if batch.request_hash != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request; use a new key")
    return batch


async def wait_for_batch(gateway: Gateway, tenant: str, batch_id: str, wait_s: float) -> Settled:
    """The batch and its jobs, once finished or after wait_s seconds (long-poll). Reading it settles it:
    a batch whose last job ended without its worker finishing the batch (a crash between the two) ends here."""
    deadline = time.monotonic() + min(wait_s, gateway.settings.max_wait_s)
    settled = await to_thread.run_sync(gateway.settle_batch, tenant, batch_id)
    while settled.batch is not None and not settled.batch.finished and time.monotonic() < deadline:
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        settled = await to_thread.run_sync(gateway.settle_batch, tenant, batch_id)
    return settled


def register_garment(gateway: Gateway, tenant: str, submission: GarmentSubmission) -> Garment:
    """Decode and analyse the garment now (a bad product image is a 4xx here, not a failed job
    later); the analysis is cached, so every try-on naming the garment reuses it. With photo_type
    model the photo is a person wearing the garment: it is extracted first (try-off) and the
    extracted flat-lay is what is registered, analysed and served."""
    settings = gateway.settings
    fields = submission.fields
    if fields.photo_type == "model" and settings.mode == "distributed":
        raise PhotoTypeUnsupported(
            "photo_type model extracts the garment with the pose and parser models, which a distributed gateway "
            "does not load: run `fitroom tryoff` and register the flat-lay it writes"
        )
    image = load_image(
        submission.image,
        gateway.fetcher,
        rgba=fields.photo_type == "flat_lay",
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    requested = fields.category
    category = None if requested == "auto" else requested
    store = TenantArtifactStore(gateway.artifacts, tenant)
    pixels, data = image.pixels, image.data
    with gateway.analysis_slots:  # analyses run on request threads: no more at once than there are workers
        pipeline = Pipeline(store, gateway.infer, learned_tryoff=settings.learned_tryoff or None)
        if fields.photo_type == "model":
            pixels = extract_garment(store, pipeline, image.pixels, category or "upper")
            data = encode_png(pixels)
        analysis = pipeline.garment(pixels, category)
    garment = Garment(
        id=new_garment_id(),
        tenant=tenant,
        category=analysis.category,
        category_confidence=analysis.category_confidence,
        requested_category=requested,
        width=analysis.image_width,
        height=analysis.image_height,
        cache_prefix=garment_cache.garment_prefix(pixels),
        sku=fields.sku,
    )
    store.put(garment_image_key(garment.id), data)
    gateway.garments.add(garment)
    return garment


def extract_garment(
    store: TenantArtifactStore, pipeline: Pipeline, photo: np.ndarray, category: Category
) -> np.ndarray:
    """The flat-lay (RGBA) of the garment of `category` worn in `photo`. The photo's pose and parse
    go through the store like a shopper's, and are erased after unless they were there before (a
    catalogue photo is not a shopper's to keep)."""
    prefix = person_prefix(photo)
    cached_before = bool(store.list(prefix))
    try:
        return pipeline.tryoff(photo, category).rgba
    finally:
        if not cached_before:
            store.delete_prefix(prefix)


def delete_garment(gateway: Gateway, garment: Garment) -> None:
    store = TenantArtifactStore(gateway.artifacts, garment.tenant)
    gateway.garments.delete(garment.tenant, garment.id)
    store.delete_prefix(garment_prefix(garment.id))
    store.delete_prefix(garment.cache_prefix)


def garment_image(gateway: Gateway, tenant: str, garment_id: str) -> tuple[bytes, str]:
    """A registered garment's image as received, with its media type (sniffed from the bytes, which
    were checked at registration)."""
    if gateway.garments.get(tenant, garment_id) is None:
        raise GarmentNotFound(f"no garment {garment_id}")
    data = TenantArtifactStore(gateway.artifacts, tenant).get(garment_image_key(garment_id))
    with Image.open(io.BytesIO(data)) as image:
        return data, Image.MIME.get(image.format or "", "application/octet-stream")
