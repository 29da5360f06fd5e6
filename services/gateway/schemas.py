"""The API's request and response bodies (pydantic v2): what /openapi.json documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.jobs import CategoryChoice, Garment, Job, JobStatus, OutputFormat, StageStatus
from services.gateway.persons import MAX_BATCH, Batch, BatchStatus, Person
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

    person_id: str | None = Field(
        None, description="a person registered with POST /v1/persons (instead of person)", max_length=64
    )
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
    intermediates: bool = Field(
        False, description="keep the pose, parse and warped garment: GET /v1/tryon/{id}/intermediates/{name}"
    )


class TryonJson(TryonFields):
    """POST /v1/tryon as application/json."""

    person: str | None = Field(None, description="the shopper's photo (or give person_id). " + IMAGE_DESCRIPTION)
    garment: str | None = Field(
        None, description="the garment's product image (or give garment_id). " + IMAGE_DESCRIPTION
    )


class TryonForm(TryonFields):
    """POST /v1/tryon as multipart/form-data (documentation only: the parser reads the parts)."""

    person: bytes | None = Field(None, description="the shopper's photo (or give person_id). " + IMAGE_DESCRIPTION)
    garment: bytes | None = Field(None, description="the garment's product image (or give garment_id)")


class PersonFields(_Strict):
    shopper_id: str | None = Field(
        None,
        pattern=SHOPPER_PATTERN,
        description="your own reference for the shopper: DELETE /v1/shoppers/{shopper_id} erases this person too",
    )


class PersonJson(PersonFields):
    """POST /v1/persons as application/json."""

    person: str = Field(description="the shopper's photo. " + IMAGE_DESCRIPTION)


class PersonForm(PersonFields):
    """POST /v1/persons as multipart/form-data (documentation only)."""

    person: bytes = Field(description="the shopper's photo. " + IMAGE_DESCRIPTION)


_BATCH_ITEMS = {"maxItems": MAX_BATCH}


class BatchFields(_Strict):
    """The fields of a batch request other than the images."""

    person_id: str | None = Field(None, description="a person registered with POST /v1/persons", max_length=64)
    garment_ids: list[str] = Field(
        default_factory=list,
        description=f"registered garments (with `garments`, 1 to {MAX_BATCH} in all; repeat the part in multipart)",
        json_schema_extra=_BATCH_ITEMS,
    )
    category: CategoryChoice = Field("auto", description="what the garments are; auto detects each")
    output_format: OutputFormat = "jpeg"
    callback_url: str | None = Field(
        None, max_length=2048, description="https URL that receives the finished batch as one signed webhook"
    )
    shopper_id: str | None = Field(
        None, pattern=SHOPPER_PATTERN, description="your own reference for the shopper (default: the person's)"
    )
    intermediates: bool = Field(False, description="every job keeps its pose, parse and warped garment")


class BatchJson(BatchFields):
    """POST /v1/tryon/batch as application/json."""

    person: str | None = Field(None, description="the shopper's photo (or give person_id). " + IMAGE_DESCRIPTION)
    garments: list[str] = Field(
        default_factory=list,
        description="product images (with `garment_ids`, 1 to 100 in all). " + IMAGE_DESCRIPTION,
        json_schema_extra=_BATCH_ITEMS,
    )


class BatchForm(BatchFields):
    """POST /v1/tryon/batch as multipart/form-data (documentation only): repeat garment_ids and garments."""

    person: bytes | None = Field(None, description="the shopper's photo (or give person_id)")
    garments: list[bytes] = Field(
        default_factory=list, description="product images, one file part each", json_schema_extra=_BATCH_ITEMS
    )


class GarmentFields(_Strict):
    category: CategoryChoice = Field(
        "auto", description="what the garment is; auto detects it (with photo_type model: auto is upper)"
    )
    photo_type: Literal["flat_lay", "model"] = Field(
        "flat_lay",
        description="flat_lay: a product image of the garment; model: a photo of a person wearing it, from which "
        "the garment of `category` is extracted as a flat-lay (try-off) and registered; GET /v1/garments/{id}/image "
        "then serves the extracted image (embedded mode only: distributed mode answers photo_type_unsupported)",
    )
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
    person_id: str | None = Field(None, description="the registered person it ran on, if any")
    batch_id: str | None = Field(None, description="the batch it belongs to, if any")
    intermediates: bool = Field(False, description="whether it keeps its pose, parse and warped garment")
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


class PersonOut(BaseModel):
    id: str
    width: int
    height: int
    shopper_id: str | None = None
    created_at: datetime


class BatchJobOut(BaseModel):
    id: str
    garment_id: str | None = None
    status: JobStatus
    status_url: str
    result_url: str | None = Field(None, description="set once the job has succeeded")
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    id: str
    status: BatchStatus = Field(description="running until every job has ended, then finished")
    created_at: datetime
    finished_at: datetime | None = None
    person_id: str | None = None
    shopper_id: str | None = None
    category: CategoryChoice
    output_format: OutputFormat
    callback_url: str | None = None
    total: int = Field(description="jobs in the batch")
    counts: dict[str, int] = Field(description="jobs by status: queued, running, succeeded, failed")
    jobs: list[BatchJobOut] = Field(description="in the order of the request: garment_ids first, then garments")
    status_url: str
    webhook: WebhookOut | None = None


class ErasureOut(BaseModel):
    jobs_deleted: int
    artifacts_deleted: int
    persons_deleted: int = 0
    batches_deleted: int = 0


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
        person_id=job.person_id,
        batch_id=job.batch_id,
        intermediates=job.intermediates,
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


def person_view(person: Person) -> PersonOut:
    return PersonOut(
        id=person.id,
        width=person.width,
        height=person.height,
        shopper_id=person.shopper_id,
        created_at=timestamp(person.created_at),
    )


def batch_view(batch: Batch, jobs: list[Job], base_url: str, webhook: DeliveryState | None = None) -> BatchOut:
    """A batch as GET /v1/tryon/batch/{id} and its webhook show it. `base_url` has no trailing '/'."""
    counts = dict.fromkeys(("queued", "running", "succeeded", "failed"), 0)
    entries = []
    for job in jobs:
        counts[job.status] += 1
        status_url = f"{base_url}/v1/tryon/{job.id}"
        entries.append(
            BatchJobOut(
                id=job.id,
                garment_id=job.garment_id,
                status=job.status,
                status_url=status_url,
                result_url=f"{status_url}/result" if job.status == "succeeded" else None,
                error=ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            )
        )
    return BatchOut(
        id=batch.id,
        status=batch.status,
        created_at=timestamp(batch.created_at),
        finished_at=timestamp(batch.finished_at) if batch.finished_at else None,
        person_id=batch.person_id,
        shopper_id=batch.shopper_id,
        category=batch.category,
        output_format=batch.output_format,
        callback_url=batch.callback_url,
        total=len(batch.job_ids),
        counts=counts,
        jobs=entries,
        status_url=f"{base_url}/v1/tryon/batch/{batch.id}",
        webhook=WebhookOut(status=webhook.status, attempts=webhook.attempts, last_error=webhook.last_error)
        if webhook
        else None,
    )
