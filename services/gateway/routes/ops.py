"""Liveness, readiness and metrics, for the orchestrator and Prometheus (no API key)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from services.gateway.deps import GatewayDep
from services.gateway.metrics import CONTENT_TYPE
from services.gateway.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Models loaded, storage, database and workers reachable",
    responses={503: {"model": Health, "description": "not ready: `checks` says what is missing"}},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    checks = await to_thread.run_sync(gateway.readiness)
    ready = all(state == "ok" for state in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(await to_thread.run_sync(gateway.metrics.render), media_type=CONTENT_TYPE)
