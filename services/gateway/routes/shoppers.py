"""/v1/shoppers: erase a shopper's data on request (photos of people are personal data)."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import GatewayDep, ShopperIdDep, TenantDep
from services.gateway.routes.openapi import errors
from services.gateway.schemas import ErasureOut
from services.gateway.service import erase_shopper

router = APIRouter(prefix="/v1/shoppers", tags=["privacy"])


@router.delete(
    "/{shopper_id}",
    summary="Erase every person, batch and try-on tagged with this shopper_id, with their photos, results and "
    "cached body data",
    responses=errors(401, 404),
)
def delete_shopper(shopper_id: ShopperIdDep, tenant: TenantDep, gateway: GatewayDep) -> ErasureOut:
    erased = erase_shopper(gateway, tenant, shopper_id)
    return ErasureOut(
        jobs_deleted=erased.jobs,
        artifacts_deleted=erased.artifacts,
        persons_deleted=erased.persons,
        batches_deleted=erased.batches,
    )
