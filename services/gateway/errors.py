"""Every error the API answers is `{"error": {"code", "message"}}` with a stable code.

FitroomError subclasses carry their own code and HTTP status; this module maps everything else
(validation errors, unknown routes, anything unexpected) onto the same envelope. An unexpected
exception is logged with its traceback and answered as a bare 500 `internal_error`: a response
never carries a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.common.errors import (
    CategoryInvalid,
    FitroomError,
    JsonInvalid,
    MethodNotAllowed,
    NotFound,
    PhotoTypeInvalid,
    QueueFull,
    RequestInvalid,
    Unauthorized,
)
from services.gateway.jobs import Job

log = logging.getLogger("fitroom.gateway")


# The storefront's resources (persons, batches, a job's intermediates). Their codes are as stable as
# those of services/common/errors.py; they live here because only the gateway raises them.
class PersonNotFound(NotFound):
    code = "person_not_found"


class BatchNotFound(NotFound):
    code = "batch_not_found"


class IntermediateNotFound(NotFound):
    """The job kept no such intermediate (it was not asked for with `intermediates`, or the job failed)."""

    code = "intermediate_not_found"


class BatchEmpty(FitroomError):
    """A batch names no garment."""

    code = "batch_empty"
    http_status = 422


class BatchTooLarge(FitroomError):
    """A batch names more garments than MAX_BATCH."""

    code = "batch_too_large"
    http_status = 422


# Fields whose bad values have their own code (clients switch on it).
_FIELD_CODES: dict[str, type[FitroomError]] = {"category": CategoryInvalid, "photo_type": PhotoTypeInvalid}


def error_response(error: FitroomError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error.to_dict()}, status_code=error.http_status, headers=headers)


def from_validation_errors(errors: Sequence[Any]) -> FitroomError:
    """One FitroomError for pydantic/FastAPI validation errors: the first error decides the code,
    the message names every field at fault (never echoing the input: it may be a whole image)."""
    if not errors:
        return RequestInvalid("the request is invalid")
    problems = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            return JsonInvalid("the body is not valid JSON")
        if kind == "extra_forbidden":
            problems.append(f"unknown field {where!r}")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    first = errors[0]
    field = next((str(p) for p in reversed(first.get("loc", ())) if isinstance(p, str)), "")
    error_class = _FIELD_CODES.get(field, RequestInvalid)
    if first.get("type") == "extra_forbidden":
        error_class = RequestInvalid
    return error_class("; ".join(problems))


def job_failure(job: Job) -> FitroomError:
    """A failed job's error as an answer to GET .../result: its code, with the 4xx that code has
    elsewhere, or 409 for a failure that was not the input's fault (a model missing, a bug)."""
    error = FitroomError(job.error_message or "the job failed")
    error.code = job.error_code or "internal_error"
    status = next((c.http_status for c in _subclasses(FitroomError) if c.code == error.code), 500)
    error.http_status = status if 400 <= status < 500 else 409
    return error


def _subclasses(cls: type[FitroomError]) -> list[type[FitroomError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


async def _fitroom_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FitroomError)
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="fitroom"'
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(request.app.state.settings.queue_retry_after_s)
    return error_response(exc, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(from_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error: FitroomError
    if exc.status_code == 404:
        error = NotFound("no such resource")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed here")
    else:
        error = RequestInvalid(str(exc.detail))
        error.http_status = exc.status_code if 400 <= exc.status_code < 500 else 400
    return error_response(error, dict(exc.headers or {}))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = FitroomError("internal error; it has been logged")
    return error_response(error)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FitroomError, _fitroom_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
