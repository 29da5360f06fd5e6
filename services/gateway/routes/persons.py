"""/v1/persons: a shopper's photo registered once; try-ons and batches name it by person_id."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.gateway.deps import GatewayDep, PersonIdDep, PersonSubmissionDep, TenantDep
from services.gateway.errors import PersonNotFound
from services.gateway.routes.openapi import errors, request_body
from services.gateway.schemas import PersonForm, PersonJson, PersonOut, person_view
from services.gateway.service import register_person

router = APIRouter(prefix="/v1/persons", tags=["persons"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a shopper's photo",
    openapi_extra=request_body(PersonJson, PersonForm),
    responses=errors(400, 401, 413, 415, 422),
)
def create_person(tenant: TenantDep, submission: PersonSubmissionDep, gateway: GatewayDep) -> PersonOut:
    return person_view(register_person(gateway, tenant, submission))


@router.get("/{person_id}", summary="A registered person", responses=errors(401, 404))
def get_person(person_id: PersonIdDep, tenant: TenantDep, gateway: GatewayDep) -> PersonOut:
    person = gateway.persons.get(tenant, person_id)
    if person is None:
        raise PersonNotFound(f"no person {person_id}")
    return person_view(person)


@router.delete(
    "/{person_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a person: the photo and its cached pose and parse",
    responses=errors(401, 404),
)
def delete_person(person_id: PersonIdDep, tenant: TenantDep, gateway: GatewayDep) -> None:
    person = gateway.persons.get(tenant, person_id)
    if person is None:
        raise PersonNotFound(f"no person {person_id}")
    gateway.erase_person(person)
