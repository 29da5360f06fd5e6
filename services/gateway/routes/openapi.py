"""OpenAPI fragments shared by the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.gateway.schemas import ErrorResponse


def request_body(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads its body itself, as JSON or multipart/form-data."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": form_model.model_json_schema()},
            },
        }
    }


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error envelope documented for each status a route can answer with."""
    described = {
        400: "malformed JSON",
        401: "no API key, or an unknown or revoked one",
        404: "not found (another tenant's resources are not found either)",
        409: "conflict",
        413: "body or image too large",
        415: "unsupported body or image type",
        422: "invalid request or image",
        503: "queue full (see Retry-After) or not ready",
    }
    return {status: {"model": ErrorResponse, "description": described[status]} for status in statuses}
