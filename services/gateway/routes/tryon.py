"""/v1/tryon: submit a try-on, follow it, fetch its result, erase it."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Response, status

from services.common.artifacts import ArtifactNotFound
from services.common.errors import JobNotFound, ResultNotReady
from services.gateway.deps import (
    BaseUrlDep,
    GatewayDep,
    IdempotencyKeyDep,
    JobIdDep,
    TenantDep,
    TryonSubmissionDep,
)
from services.gateway.errors import IntermediateNotFound, job_failure
from services.gateway.routes.openapi import errors, request_body
from services.gateway.schemas import JobOut, TryonForm, TryonJson, job_view
from services.gateway.service import submit_tryon, wait_for_job
from services.gateway.storage import INTERMEDIATES, MEDIA_TYPES, TenantArtifactStore, intermediate_key, result_key

router = APIRouter(prefix="/v1/tryon", tags=["try-on"])

WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=3600,
        description="long-poll: wait up to this many seconds (capped by the server) for the job to finish",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a try-on",
    openapi_extra=request_body(TryonJson, TryonForm),
    responses=errors(400, 401, 404, 409, 413, 415, 422, 503),
)
def create_tryon(
    tenant: TenantDep,
    submission: TryonSubmissionDep,
    gateway: GatewayDep,
    base: BaseUrlDep,
    response: Response,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobOut:
    submitted = submit_tryon(gateway, tenant, submission, idempotency_key, base)
    view = job_view(submitted.job, base, gateway.outbox.state(submitted.job.id))
    response.headers["Location"] = view.status_url
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("/{job_id}", summary="A try-on's status", response_model=JobOut, responses=errors(401, 404, 422))
async def get_tryon(
    job_id: JobIdDep, tenant: TenantDep, gateway: GatewayDep, base: BaseUrlDep, wait: WaitQuery = 0
) -> Response:
    # The hottest route (storefronts poll it): one store read for the job, one more only when it has
    # a webhook, and the view serialised once, by pydantic (not validated again by FastAPI).
    job = await wait_for_job(gateway, tenant, job_id, wait)
    if job is None:
        raise JobNotFound(f"no try-on job {job_id}")
    download_url = None
    if job.status == "succeeded":
        store = TenantArtifactStore(gateway.artifacts, tenant)
        # In a thread: signing may first refresh the credentials (the instance's role), over the network.
        download_url = await to_thread.run_sync(store.presigned_url, result_key(job.id, job.output_format))
    webhook = await to_thread.run_sync(gateway.outbox.state, job.id) if job.callback_url else None
    view = job_view(job, base, webhook, download_url)
    return Response(view.model_dump_json(), media_type="application/json")


@router.get(
    "/{job_id}/result",
    summary="A try-on's result image",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image"},
        **errors(401, 404, 409, 422),
    },
)
async def get_tryon_result(job_id: JobIdDep, tenant: TenantDep, gateway: GatewayDep, wait: WaitQuery = 0) -> Response:
    job = await wait_for_job(gateway, tenant, job_id, wait)
    if job is None:
        raise JobNotFound(f"no try-on job {job_id}")
    if job.status == "failed":
        raise job_failure(job)
    if job.status != "succeeded":
        raise ResultNotReady(f"the job is {job.status}: poll its status, or add ?wait=<seconds>")
    store = TenantArtifactStore(gateway.artifacts, tenant)
    image = await to_thread.run_sync(store.get, result_key(job.id, job.output_format))
    extension = "jpg" if job.output_format == "jpeg" else "png"
    return Response(
        image,
        media_type=MEDIA_TYPES[job.output_format],
        headers={
            "Cache-Control": "private, no-store",  # a photo of a person: no shared cache keeps it
            "Content-Disposition": f'inline; filename="{job.id}.{extension}"',
        },
    )


@router.get(
    "/{job_id}/intermediates/{name}",
    summary="What a try-on made on the way: the pose, the parse or the warped garment",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image"},
        **errors(401, 404, 422),
    },
)
async def get_tryon_intermediate(
    job_id: JobIdDep,
    name: Annotated[
        Literal["pose", "parse", "warped"],
        Path(
            description="pose: the skeleton over the photo (JPEG); parse: the LIP label map (PNG); "
            "warped: the garment warped onto the body (RGBA PNG)"
        ),
    ],
    tenant: TenantDep,
    gateway: GatewayDep,
) -> Response:
    job = await to_thread.run_sync(gateway.jobs.get, tenant, job_id)
    if job is None:
        raise JobNotFound(f"no try-on job {job_id}")
    if not job.finished:
        raise ResultNotReady(f"the job is {job.status}: its intermediates come with its result")
    try:
        image = await to_thread.run_sync(
            TenantArtifactStore(gateway.artifacts, tenant).get, intermediate_key(job.id, name)
        )
    except ArtifactNotFound:
        raise IntermediateNotFound(
            f"job {job.id} kept no {name}: send intermediates=true with the try-on (a failed job keeps none)"
        ) from None
    return Response(image, media_type=INTERMEDIATES[name][1], headers={"Cache-Control": "private, no-store"})


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a try-on: its photos, result and the cached data of the shopper's photo",
    responses=errors(401, 404),
)
def delete_tryon(job_id: JobIdDep, tenant: TenantDep, gateway: GatewayDep) -> None:
    job = gateway.jobs.get(tenant, job_id)
    if job is None:
        raise JobNotFound(f"no try-on job {job_id}")
    gateway.erase_job(job)
