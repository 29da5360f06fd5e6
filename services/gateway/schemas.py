"""The API's request and response bodies (pydantic v2): what /openapi.json documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.jobs import CategoryChoice, Garment, Job, JobStatus, OutputFormat, StageStatus
from services.gateway.webhooks import DeliveryState, DeliveryStatus

IMAGE_DESCRIPTION = (
    "In JSON: a base64 data URL (`data:image/jpeg;base64,...`) or an https URL the gateway fetches. "
    "In multipart/form-data: a file part, or a text part holding a data URL or URL. "
    "JPEG, PNG, WebP, BMP or TIFF."
)
SHOPPER_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TryonFields(_Strict):
    """The fields of a try-on request other than the images."""

    garment_id: str | None = Field(None, description="a garment registered with POST /v1/garments", max_length=64)
    category: CategoryChoice = Field("auto", description="what the garment is; auto detects it")
    output_format: OutputFormat = "jpeg"
    callback_url: str | None = Field(
        None, max_length=2048, description="https URL that receives the finished job as a signed webhook"
    )
    shopper_id: str | None = Field(
        None,
        pattern=SHOPPER_PATTERN,
        description="your own opaque reference for the shopper: DELETE /v1/shoppers/{shopper_id} erases their data",
    )


class TryonJson(TryonFields):
    """POST /v1/tryon as application/json."""

    person: str = Field(description="the shopper's photo. " + IMAGE_DESCRIPTION)
    garment: str | None = Field(
        None, description="the garment's product image (or give garment_id). " + IMAGE_DESCRIPTION
    )


class TryonForm(TryonFields):
    """POST /v1/tryon as multipart/form-data (documentation only: the parser reads the parts)."""

    person: bytes = Field(description="the shopper's photo. " + IMAGE_DESCRIPTION)
    garment: bytes | None = Field(None, description="the garment's product image (or give garment_id)")


class GarmentFields(_Strict):
    category: CategoryChoice = Field("auto", description="what the garment is; auto detects it")
    sku: str | None = Field(None, max_length=128, description="your own reference for the garment")


class GarmentJson(GarmentFields):
    """POST /v1/garments as application/json."""

    image: str = Field(description="the garment's product image. " + IMAGE_DESCRIPTION)


class GarmentForm(GarmentFields):
    """POST /v1/garments as multipart/form-data (documentation only)."""

    image: bytes = Field(description="the garment's product image")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: switch on this", examples=["image_invalid"])
    message: str = Field(description="for people; may change")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StageOut(BaseModel):
    status: StageStatus
    seconds: float | None = Field(None, description="time the stage took; 0 when served from the cache")


class WebhookOut(BaseModel):
    status: DeliveryStatus
    attempts: int
    last_error: str | None = None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    category: CategoryChoice = Field(description="as asked")
    detected_category: str | None = Field(None, description="the garment's category the job used")
    output_format: OutputFormat
    garment_id: str | None = None
    shopper_id: str | None = None
    callback_url: str | None = None
    stages: dict[str, StageOut] = Field(description="pose, parser, garment, warp, fusion")
    status_url: str
    result_url: str | None = Field(None, description="set once the job has succeeded")
    download_url: str | None = Field(
        None,
        description="with S3 storage, once the job has succeeded: a presigned URL of the result image that "
        "needs no API key and expires after FITROOM_S3_PRESIGN_EXPIRY_S (ask the status again for a fresh one)",
    )
    error: ErrorDetail | None = None
    webhook: WebhookOut | None = None


class GarmentOut(BaseModel):
    id: str
    category: str
    category_confidence: float = Field(
        description="how sure `auto` was of the category, 0.5 to 1 (1 when it was sent); "
        "below 0.8 registration fails with category_uncertain"
    )
    requested_category: CategoryChoice
    width: int
    height: int
    sku: str | None = None
    created_at: datetime


class GarmentList(BaseModel):
    data: list[GarmentOut]
    has_more: bool
    next_after: str | None = Field(None, description="pass as ?after= to get the next page")


class ErasureOut(BaseModel):
    jobs_deleted: int
    artifacts_deleted: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def job_view(job: Job, base_url: str, webhook: DeliveryState | None = None, download_url: str | None = None) -> JobOut:
    """A job as the API shows it, in GET /v1/tryon/{id} and in webhooks. `base_url` has no trailing '/'."""
    status_url = f"{base_url}/v1/tryon/{job.id}"
    return JobOut(
        id=job.id,
        status=job.status,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at) if job.started_at else None,
        finished_at=timestamp(job.finished_at) if job.finished_at else None,
        category=job.category,
        detected_category=job.detected_category,
        output_format=job.output_format,
        garment_id=job.garment_id,
        shopper_id=job.shopper_id,
        callback_url=job.callback_url,
        stages={name: StageOut(status=s.status, seconds=s.seconds) for name, s in job.stages.items()},
        status_url=status_url,
        result_url=f"{status_url}/result" if job.status == "succeeded" else None,
        download_url=download_url if job.status == "succeeded" else None,
        error=ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        webhook=WebhookOut(status=webhook.status, attempts=webhook.attempts, last_error=webhook.last_error)
        if webhook
        else None,
    )


def garment_view(garment: Garment) -> GarmentOut:
    return GarmentOut(
        id=garment.id,
        category=garment.category,
        category_confidence=garment.category_confidence,
        requested_category=garment.requested_category,
        width=garment.width,
        height=garment.height,
        sku=garment.sku,
        created_at=timestamp(garment.created_at),
    )
