"""/v1/tryon/batch: many garments on one person in one request, followed as one resource."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Response, status

from services.gateway.deps import BaseUrlDep, BatchIdDep, BatchSubmissionDep, GatewayDep, IdempotencyKeyDep, TenantDep
from services.gateway.errors import BatchNotFound
from services.gateway.routes.openapi import errors, request_body
from services.gateway.routes.tryon import WaitQuery
from services.gateway.schemas import BatchForm, BatchJson, BatchOut, batch_view
from services.gateway.service import submit_batch, wait_for_batch

router = APIRouter(prefix="/v1/tryon/batch", tags=["try-on"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Try up to 100 garments on one person",
    openapi_extra=request_body(BatchJson, BatchForm),
    responses=errors(400, 401, 404, 409, 413, 415, 422, 503),
)
def create_batch(
    tenant: TenantDep,
    submission: BatchSubmissionDep,
    gateway: GatewayDep,
    base: BaseUrlDep,
    response: Response,
    idempotency_key: IdempotencyKeyDep = None,
) -> BatchOut:
    batch, replayed = submit_batch(gateway, tenant, submission, idempotency_key, base)
    settled = gateway.settle_batch(tenant, batch.id)
    view = batch_view(settled.batch or batch, settled.jobs, base)
    response.headers["Location"] = view.status_url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("/{batch_id}", summary="A batch's progress", responses=errors(401, 404, 422))
async def get_batch(
    batch_id: BatchIdDep, tenant: TenantDep, gateway: GatewayDep, base: BaseUrlDep, wait: WaitQuery = 0
) -> BatchOut:
    settled = await wait_for_batch(gateway, tenant, batch_id, wait)
    if settled.batch is None:
        raise BatchNotFound(f"no batch {batch_id}")
    webhook = await to_thread.run_sync(gateway.outbox.state, batch_id) if settled.batch.callback_url else None
    return batch_view(settled.batch, settled.jobs, base, webhook)


@router.delete(
    "/{batch_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a batch and every try-on in it",
    responses=errors(401, 404),
)
def delete_batch(batch_id: BatchIdDep, tenant: TenantDep, gateway: GatewayDep) -> None:
    batch = gateway.batches.get(tenant, batch_id)
    if batch is None:
        raise BatchNotFound(f"no batch {batch_id}")
    gateway.erase_batch(batch)
