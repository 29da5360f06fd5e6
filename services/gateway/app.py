"""The FastAPI app: `create_app(settings)` wires routes, error handling, limits and metrics; the
lifespan starts the embedded runtime (workers, webhooks, model warm-up) and stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from services.common.config import Settings, get_settings
from services.gateway import errors
from services.gateway.metrics import Metrics, MetricsMiddleware
from services.gateway.middleware import BodyLimitMiddleware
from services.gateway.routes import batches, demo, garments, ops, persons, shoppers, tryon
from services.gateway.runtime import Gateway

DESCRIPTION = """
Virtual try-on for retailers: send a shopper's photo and a garment, get the shopper wearing it.

Authenticate with `Authorization: Bearer <API key>`. Every error is
`{"error": {"code": "...", "message": "..."}}`; switch on `code`. See docs/API.md.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await to_thread.run_sync(Gateway, settings, metrics)
        await to_thread.run_sync(gateway.start)
        app.state.gateway = gateway
        try:
            yield
        finally:
            await to_thread.run_sync(gateway.stop)

    app = FastAPI(title="Fitroom", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    errors.install(app)
    # The batch routes first: /v1/tryon/batch must never be read as the job id "batch".
    for module in (batches, tryon, persons, garments, shoppers, ops):
        app.include_router(module.router)
    if settings.demo:
        demo.install(app)
    # Added last = outermost: metrics see every answer, including the body limit's 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
