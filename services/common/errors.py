"""Typed errors with stable, machine-readable codes.

Every error a user can cause carries a `code` that the CLI prints, the REST API returns
and clients may switch on. Codes never change once published; messages may.
"""

from __future__ import annotations


class FitroomError(Exception):
    """Base of every expected failure. `http_status` is what the gateway answers."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ImageInvalid(FitroomError):
    """Not a decodable image: corrupt, truncated, empty, or not an image at all."""

    code = "image_invalid"
    http_status = 422


class ImageTooLarge(FitroomError):
    """Too many bytes or too many pixels (including decompression bombs)."""

    code = "image_too_large"
    http_status = 413


class UnsupportedMediaType(FitroomError):
    """A real image in a format we do not accept (e.g. SVG, GIF animation)."""

    code = "unsupported_media_type"
    http_status = 415


class NoPersonDetected(FitroomError):
    code = "no_person_detected"
    http_status = 422


class ModelUnavailable(FitroomError):
    """A model file is missing or failed to load: run `fitroom models build`."""

    code = "model_unavailable"
    http_status = 503


class InferenceUnavailable(FitroomError):
    """The inference backend (e.g. Triton) could not be reached."""

    code = "inference_unavailable"
    http_status = 503


class StorageUnavailable(FitroomError):
    """The artifact store (e.g. S3) could not be reached or refused the request."""

    code = "storage_unavailable"
    http_status = 503


class QueueUnavailable(FitroomError):
    """The job queue or the job state (Redis) could not be reached."""

    code = "queue_unavailable"
    http_status = 503


class WorkerLost(FitroomError):
    """A stage's worker died every time it ran this job (a poison input, or out of memory)."""

    code = "worker_lost"
    http_status = 500


class JobTimeout(FitroomError):
    """The job did not finish within FITROOM_JOB_DEADLINE_S of being accepted."""

    code = "job_timeout"
    http_status = 504


# Failures worth retrying: the service behind them may come back.
TRANSIENT_ERRORS: tuple[type[FitroomError], ...] = (InferenceUnavailable, StorageUnavailable, QueueUnavailable)


class GarmentNotDetected(FitroomError):
    """The garment image holds no garment we can cut out: blank, noise, or not a product shot."""

    code = "garment_not_detected"
    http_status = 422


class CategoryUncertain(FitroomError):
    """`auto` could not tell the garment's category surely enough: the caller must send it."""

    code = "category_uncertain"
    http_status = 422


class CategoryUnsupported(FitroomError):
    """The photo cannot wear this category: the body parts it sits on are not in view."""

    code = "category_unsupported"
    http_status = 422


# --------------------------------------------------------------------------- REST gateway


class RequestInvalid(FitroomError):
    """The request does not match the API's schema: a missing or unknown field, a wrong type."""

    code = "request_invalid"
    http_status = 422


class JsonInvalid(FitroomError):
    """The body is not well-formed JSON."""

    code = "json_invalid"
    http_status = 400


class CategoryInvalid(FitroomError):
    """The category is not one of auto, upper, lower, dress (or contradicts a registered garment)."""

    code = "category_invalid"
    http_status = 422


class PhotoTypeInvalid(FitroomError):
    """A garment's photo_type is not one of flat_lay, model."""

    code = "photo_type_invalid"
    http_status = 422


class PhotoTypeUnsupported(FitroomError):
    """photo_type model (try-off) in distributed mode, whose gateway loads no models: extract the
    garment with `fitroom tryoff` and register the flat-lay."""

    code = "photo_type_unsupported"
    http_status = 422


class RequestTooLarge(FitroomError):
    """The request body is over FITROOM_MAX_REQUEST_BYTES."""

    code = "request_too_large"
    http_status = 413


class Unauthorized(FitroomError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"
    http_status = 401


class NotFound(FitroomError):
    """No such route, or no such resource for this tenant (another tenant's is not found either)."""

    code = "not_found"
    http_status = 404


class JobNotFound(NotFound):
    code = "job_not_found"


class GarmentNotFound(NotFound):
    code = "garment_not_found"


class MethodNotAllowed(FitroomError):
    code = "method_not_allowed"
    http_status = 405


class ResultNotReady(FitroomError):
    """The job has not succeeded (yet): its status says whether to wait or give up."""

    code = "result_not_ready"
    http_status = 409


class IdempotencyConflict(FitroomError):
    """The Idempotency-Key was used before with a different request."""

    code = "idempotency_conflict"
    http_status = 409


class QueueFull(FitroomError):
    """Every worker is busy and the queue is full: retry after the Retry-After header's seconds."""

    code = "queue_full"
    http_status = 503


class UrlForbidden(FitroomError):
    """A URL the gateway will not fetch: not https, credentials in it, or a private, loopback,
    link-local or otherwise non-public address (server-side request forgery guard)."""

    code = "url_forbidden"
    http_status = 422


class UrlFetchFailed(FitroomError):
    """An image URL could not be fetched: DNS, connection, timeout, an error status, too many redirects."""

    code = "url_fetch_failed"
    http_status = 422
