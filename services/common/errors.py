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


class GarmentNotDetected(FitroomError):
    """The garment image holds no garment we can cut out: blank, noise, or not a product shot."""

    code = "garment_not_detected"
    http_status = 422


class CategoryUnsupported(FitroomError):
    """The photo cannot wear this category: the body parts it sits on are not in view."""

    code = "category_unsupported"
    http_status = 422
