"""FastAPI dependencies: the gateway, the caller's tenant, checked path ids, the request bodies.

The cheap ones are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and a
hop there costs more than what these do (a status read made five of them)."""

from __future__ import annotations

import re
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common.errors import GarmentNotFound, JobNotFound, NotFound, Unauthorized
from services.gateway.errors import BatchNotFound, PersonNotFound
from services.gateway.inputs import (
    BatchSubmission,
    GarmentSubmission,
    PersonSubmission,
    TryonSubmission,
    read_batch,
    read_garment,
    read_person,
    read_tryon,
)
from services.gateway.jobs import is_garment_id, is_job_id
from services.gateway.persons import is_batch_id, is_person_id
from services.gateway.runtime import Gateway
from services.gateway.schemas import SHOPPER_PATTERN

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `fitroom keys create`: `Authorization: Bearer fr_...`"
)


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def current_tenant(
    gateway: GatewayDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    if credentials is None:
        raise Unauthorized("send your API key as Authorization: Bearer <key>")
    key = credentials.credentials
    tenant = gateway.auth_cache.get(key)
    if tenant is None:
        tenant = await to_thread.run_sync(gateway.keys.authenticate, key)
        if tenant is None:
            raise Unauthorized("the API key is unknown or revoked")
        gateway.auth_cache.put(key, tenant)
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]


async def base_url(request: Request, gateway: GatewayDep) -> str:
    """Where clients reach us, for the links in responses: FITROOM_PUBLIC_URL, else this request's."""
    return gateway.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")


BaseUrlDep = Annotated[str, Depends(base_url)]


# Ids are checked here rather than with a schema pattern: a malformed id is simply not found (404),
# whatever it holds (path traversal, SQL, a very long string), and never reaches storage.
async def job_id_path(job_id: Annotated[str, Path(description="a job id: job_ and 32 hex digits")]) -> str:
    if not is_job_id(job_id):
        raise JobNotFound(f"no try-on job {job_id[:80]!r}")
    return job_id


async def garment_id_path(garment_id: Annotated[str, Path(description="a garment id: gar_ and 32 hex digits")]) -> str:
    if not is_garment_id(garment_id):
        raise GarmentNotFound(f"no garment {garment_id[:80]!r}")
    return garment_id


async def person_id_path(person_id: Annotated[str, Path(description="a person id: per_ and 32 hex digits")]) -> str:
    if not is_person_id(person_id):
        raise PersonNotFound(f"no person {person_id[:80]!r}")
    return person_id


async def batch_id_path(batch_id: Annotated[str, Path(description="a batch id: bat_ and 32 hex digits")]) -> str:
    if not is_batch_id(batch_id):
        raise BatchNotFound(f"no batch {batch_id[:80]!r}")
    return batch_id


async def shopper_id_path(shopper_id: Annotated[str, Path(description="the shopper_id given with try-ons")]) -> str:
    if re.fullmatch(SHOPPER_PATTERN, shopper_id) is None:
        raise NotFound(f"no shopper {shopper_id[:80]!r}")
    return shopper_id


JobIdDep = Annotated[str, Depends(job_id_path)]
GarmentIdDep = Annotated[str, Depends(garment_id_path)]
ShopperIdDep = Annotated[str, Depends(shopper_id_path)]
PersonIdDep = Annotated[str, Depends(person_id_path)]
BatchIdDep = Annotated[str, Depends(batch_id_path)]
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="retrying with the same key and body returns the first job; another body is a 409",
    ),
]


# Bodies are read after authentication (parameter order): an unauthenticated upload is never parsed.
async def tryon_submission(request: Request, gateway: GatewayDep, tenant: TenantDep) -> TryonSubmission:
    return await read_tryon(request, gateway.settings.max_request_bytes)


async def garment_submission(request: Request, gateway: GatewayDep, tenant: TenantDep) -> GarmentSubmission:
    return await read_garment(request, gateway.settings.max_request_bytes)


async def person_submission(request: Request, gateway: GatewayDep, tenant: TenantDep) -> PersonSubmission:
    return await read_person(request, gateway.settings.max_request_bytes)


async def batch_submission(request: Request, gateway: GatewayDep, tenant: TenantDep) -> BatchSubmission:
    return await read_batch(request, gateway.settings.max_request_bytes)


TryonSubmissionDep = Annotated[TryonSubmission, Depends(tryon_submission)]
GarmentSubmissionDep = Annotated[GarmentSubmission, Depends(garment_submission)]
PersonSubmissionDep = Annotated[PersonSubmission, Depends(person_submission)]
BatchSubmissionDep = Annotated[BatchSubmission, Depends(batch_submission)]
