"""Reading request bodies: JSON or multipart/form-data into one submission, and an image given as
an upload, a data URL or a URL into checked bytes.

Both body forms go through the same pydantic model, so a field means the same thing and fails
with the same code in either. Images are decoded here, in the request, so a bad image is a 4xx
before any job exists; what reaches a worker has already been read once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from services.common.errors import (
    FitroomError,
    ImageInvalid,
    ImageTooLarge,
    JsonInvalid,
    RequestInvalid,
    UnsupportedMediaType,
)
from services.common.imageio import decode_image, decode_image_rgba
from services.gateway.errors import BatchEmpty, BatchTooLarge, from_validation_errors
from services.gateway.fetch import SafeFetcher
from services.gateway.persons import MAX_BATCH
from services.gateway.schemas import (
    BatchFields,
    BatchJson,
    GarmentFields,
    GarmentJson,
    PersonFields,
    PersonJson,
    TryonFields,
    TryonJson,
)

Fields = TypeVar("Fields", bound=BaseModel)

# Declared types an upload or data URL may carry; the bytes are sniffed whatever they say.
_NEUTRAL_TYPES = ("", "application/octet-stream", "binary/octet-stream")
_DATA_URL = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL | re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}:")
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True)
class ImageSource:
    """One image of a request as it came: an uploaded file's bytes, or text (data URL or URL)."""

    field: str
    upload: bytes | None = None
    upload_type: str = ""
    text: str | None = None

    def fingerprint(self) -> str:
        """What the idempotency check compares: the bytes' hash, or the text itself."""
        if self.upload is not None:
            return "sha256:" + hashlib.sha256(self.upload).hexdigest()
        text = self.text or ""
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest() if text.startswith("data:") else text


@dataclass(frozen=True)
class TryonSubmission:
    person: ImageSource | None  # None: fields.person_id names a registered person
    garment: ImageSource | None
    fields: TryonFields

    def fingerprint(self) -> str:
        canonical = {
            "person": self.person.fingerprint() if self.person else None,
            "garment": self.garment.fingerprint() if self.garment else None,
            **self.fields.model_dump(),
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GarmentSubmission:
    image: ImageSource
    fields: GarmentFields


@dataclass(frozen=True)
class PersonSubmission:
    image: ImageSource
    fields: PersonFields


@dataclass(frozen=True)
class BatchSubmission:
    person: ImageSource | None  # None: fields.person_id names a registered person
    garments: list[ImageSource]  # product images, after fields.garment_ids
    fields: BatchFields

    def fingerprint(self) -> str:
        canonical = {
            "person": self.person.fingerprint() if self.person else None,
            "garments": [g.fingerprint() for g in self.garments],
            **self.fields.model_dump(),
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LoadedImage:
    data: bytes  # as received: stored for the worker, which decodes it again
    pixels: np.ndarray


async def read_tryon(request: Request, max_bytes: int) -> TryonSubmission:
    """POST /v1/tryon's body, JSON or multipart."""
    body, images = await _read_body(request, ("person", "garment"), max_bytes)
    if _is_json(request):
        parsed = _validate(TryonJson, body)
        person, garment = _text_source("person", parsed.person), _text_source("garment", parsed.garment)
        fields = TryonFields.model_validate(parsed.model_dump(exclude={"person", "garment"}))
    else:  # multipart: the image fields, files or text, are already split off
        fields = _validate(TryonFields, body)
        person, garment = images.get("person"), images.get("garment")
    if (person is None) == (fields.person_id is None):
        raise RequestInvalid("give exactly one of person (the shopper's photo) and person_id (a registered person)")
    if (garment is None) == (fields.garment_id is None):
        raise RequestInvalid("give exactly one of garment (an image) and garment_id (a registered garment)")
    return TryonSubmission(person=person, garment=garment, fields=fields)


async def read_garment(request: Request, max_bytes: int) -> GarmentSubmission:
    """POST /v1/garments' body, JSON or multipart."""
    image, fields = await _read_one_image(
        request, max_bytes, "image", GarmentJson, GarmentFields, "image is required: the garment's product image"
    )
    return GarmentSubmission(image=image, fields=fields)


async def read_person(request: Request, max_bytes: int) -> PersonSubmission:
    """POST /v1/persons' body, JSON or multipart."""
    image, fields = await _read_one_image(
        request, max_bytes, "person", PersonJson, PersonFields, "person is required: the shopper's photo"
    )
    return PersonSubmission(image=image, fields=fields)


async def _read_one_image(
    request: Request,
    max_bytes: int,
    name: str,
    json_model: type[BaseModel],
    fields_model: type[Fields],
    missing: str,
) -> tuple[ImageSource, Fields]:
    """A body of one image (the field `name`) and its fields, JSON or multipart."""
    body, images = await _read_body(request, (name,), max_bytes)
    if _is_json(request):
        parsed = _validate(json_model, body)
        image = _text_source(name, getattr(parsed, name))
        fields = fields_model.model_validate(parsed.model_dump(exclude={name}))
    else:
        fields = _validate(fields_model, body)
        image = images.get(name)
    if image is None:
        raise RequestInvalid(missing)
    return image, fields


async def read_batch(request: Request, max_bytes: int) -> BatchSubmission:
    """POST /v1/tryon/batch's body: JSON, or multipart with garment_ids and garments repeated."""
    body, images = await _read_body(
        request, ("person", "garments"), max_bytes, repeated=("garment_ids", "garments"), max_files=MAX_BATCH + 2
    )
    if _is_json(request):
        parsed = _validate(BatchJson, body)
        person = _text_source("person", parsed.person)
        garments = [ImageSource(field=f"garments[{i}]", text=text) for i, text in enumerate(parsed.garments)]
        fields = BatchFields.model_validate(parsed.model_dump(exclude={"person", "garments"}))
    else:
        fields = _validate(BatchFields, body)
        person = images.get("person")
        garments = [
            ImageSource(f"garments[{i}]", g.upload, g.upload_type, g.text)
            for i, g in enumerate(images.get("garments", []))
        ]
    if (person is None) == (fields.person_id is None):
        raise RequestInvalid("give exactly one of person (the shopper's photo) and person_id (a registered person)")
    count = len(fields.garment_ids) + len(garments)
    if count == 0:
        raise BatchEmpty("name at least one garment: garment_ids (registered garments) or garments (images)")
    if count > MAX_BATCH:
        raise BatchTooLarge(f"a batch takes at most {MAX_BATCH} garments, not {count}: split it")
    return BatchSubmission(person=person, garments=garments, fields=fields)


def load_image(
    source: ImageSource, fetcher: SafeFetcher, *, rgba: bool, max_bytes: int, max_pixels: int
) -> LoadedImage:
    """The source's bytes, fetched or decoded from base64, and checked by decoding them.

    Blocking (fetch and decode): call it from a worker thread, never on the event loop.
    """
    try:
        if source.upload is not None:
            _check_declared_type(source.upload_type, source.field)
            data = source.upload
        else:
            data = _text_bytes(source.text or "", fetcher, max_bytes)
        decode = decode_image_rgba if rgba else decode_image
        return LoadedImage(data, decode(data, max_bytes=max_bytes, max_pixels=max_pixels))
    except FitroomError as exc:
        exc.message = f"{source.field}: {exc.message}"  # which of the request's images it was
        raise


def _text_bytes(text: str, fetcher: SafeFetcher, max_bytes: int) -> bytes:
    if text[:5].lower() == "data:":
        return _data_url_bytes(text, max_bytes)
    if _SCHEME.match(text):
        return fetcher.get_image(text, max_bytes)  # the policy refuses file:, ftp:, http: ...
    raise ImageInvalid("expected an uploaded file, a base64 data: URL or an https URL")


def _data_url_bytes(text: str, max_bytes: int) -> bytes:
    match = _DATA_URL.fullmatch(text)
    if match is None:
        raise ImageInvalid("malformed data URL: expected data:image/<type>;base64,<data>")
    media_type, params, payload = match.group(1).strip().lower(), match.group(2).lower(), match.group(3)
    _check_declared_type(media_type, "data URL")
    if "base64" not in {p.strip() for p in params.split(";")}:
        raise ImageInvalid("data URLs must be base64 encoded (data:image/<type>;base64,...)")
    compact = _WHITESPACE.sub(b"", payload.encode("ascii", errors="replace"))
    if len(compact) // 4 * 3 > max_bytes:
        raise ImageTooLarge(f"the image is over the limit of {max_bytes:,} bytes")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInvalid("the data URL is not valid base64") from None


def _check_declared_type(content_type: str, what: str) -> None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in _NEUTRAL_TYPES and not media_type.startswith("image/"):
        raise UnsupportedMediaType(f"{what} is declared as {media_type}; send an image")


def _text_source(field: str, value: str | None) -> ImageSource | None:
    """An image given in JSON: a data URL or a URL, checked when it is loaded."""
    return None if value is None else ImageSource(field=field, text=value)


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _read_body(
    request: Request,
    image_fields: tuple[str, ...],
    max_bytes: int,
    repeated: tuple[str, ...] = (),
    max_files: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body's fields, and its uploaded files by field name (multipart only). A field named in
    `repeated` may come more than once in multipart, and its value is then the list of them."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if _is_json(request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JsonInvalid(f"the body is not valid JSON: {exc}") from None
        except RecursionError:  # the decoder recurses per level: [[[[...]]]] 100,000 deep
            raise JsonInvalid("the body is not valid JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise RequestInvalid("the JSON body must be an object")
        return body, {}
    if media_type == "multipart/form-data":
        return await _read_multipart(request, image_fields, max_bytes, repeated, max_files)
    shown = media_type or "no Content-Type"
    raise UnsupportedMediaType(f"the body must be application/json or multipart/form-data, not {shown}")


async def _read_multipart(
    request: Request,
    image_fields: tuple[str, ...],
    max_bytes: int,
    repeated: tuple[str, ...] = (),
    max_files: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    # Repeated fields (a batch's garment_ids) may add as many parts as a batch has garments.
    max_fields = 16 + (2 * MAX_BATCH if repeated else 0)
    try:
        # A data URL may arrive as a text part, so text parts may be as large as the body itself.
        form = await request.form(
            max_files=max_files or len(image_fields), max_fields=max_fields, max_part_size=max_bytes
        )
    except HTTPException as exc:  # Starlette's answer to a malformed or over-limit multipart body
        raise RequestInvalid(f"malformed multipart body: {exc.detail}") from None
    fields: dict[str, Any] = {name: [] for name in repeated if name not in image_fields}
    images: dict[str, Any] = {name: [] for name in repeated if name in image_fields}
    try:
        for name, value in form.multi_items():
            if name not in repeated and (name in fields or name in images):
                raise RequestInvalid(f"field {name!r} is given more than once")
            if value == "":
                continue  # an HTML form sends its empty inputs: they mean "not given"
            if isinstance(value, UploadFile):
                if name not in image_fields:
                    raise RequestInvalid(f"field {name!r} cannot be a file (files: {', '.join(image_fields)})")
                data = await value.read(max_bytes + 1)
                source = ImageSource(field=name, upload=data, upload_type=value.content_type or "")
            elif name in image_fields:
                source = ImageSource(field=name, text=value)
            else:
                if name in repeated:
                    fields[name].append(value)
                else:
                    fields[name] = value
                continue
            if name in repeated:
                images[name].append(source)
            else:
                images[name] = source
    finally:
        await form.close()
    return fields, images


def _validate(model: type[Fields], body: dict[str, Any]) -> Fields:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_input=False)) from None
