"""/v1/garments: register a garment once (analysed once), list, show and delete it."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Response, status

from services.common.errors import GarmentNotFound
from services.gateway.deps import GarmentIdDep, GarmentSubmissionDep, GatewayDep, TenantDep
from services.gateway.routes.openapi import errors, request_body
from services.gateway.schemas import GarmentForm, GarmentJson, GarmentList, GarmentOut, garment_view
from services.gateway.service import delete_garment, garment_image, register_garment

router = APIRouter(prefix="/v1/garments", tags=["garments"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a garment",
    openapi_extra=request_body(GarmentJson, GarmentForm),
    responses=errors(400, 401, 413, 415, 422),
)
def create_garment(tenant: TenantDep, submission: GarmentSubmissionDep, gateway: GatewayDep) -> GarmentOut:
    return garment_view(register_garment(gateway, tenant, submission))


@router.get("", summary="List garments, oldest first", responses=errors(401, 422))
def list_garments(
    tenant: TenantDep,
    gateway: GatewayDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64, description="next_after of the previous page")] = None,
) -> GarmentList:
    page = gateway.garments.list(tenant, limit + 1, after)
    has_more = len(page) > limit
    page = page[:limit]
    return GarmentList(
        data=[garment_view(g) for g in page], has_more=has_more, next_after=page[-1].id if has_more else None
    )


@router.get("/{garment_id}", summary="A garment", responses=errors(401, 404))
def get_garment(garment_id: GarmentIdDep, tenant: TenantDep, gateway: GatewayDep) -> GarmentOut:
    garment = gateway.garments.get(tenant, garment_id)
    if garment is None:
        raise GarmentNotFound(f"no garment {garment_id}")
    return garment_view(garment)


@router.get(
    "/{garment_id}/image",
    summary="A garment's product image, as registered",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the image"}, **errors(401, 404)},
)
async def get_garment_image(garment_id: GarmentIdDep, tenant: TenantDep, gateway: GatewayDep) -> Response:
    data, media_type = await to_thread.run_sync(garment_image, gateway, tenant, garment_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


@router.delete(
    "/{garment_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a garment", responses=errors(401, 404)
)
def remove_garment(garment_id: GarmentIdDep, tenant: TenantDep, gateway: GatewayDep) -> None:
    garment = gateway.garments.get(tenant, garment_id)
    if garment is None:
        raise GarmentNotFound(f"no garment {garment_id}")
    delete_garment(gateway, garment)
