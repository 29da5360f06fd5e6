"""Where the gateway keeps images: every tenant in its own part of the artifact store.

The pipeline caches a person's pose and parse under the photo's content hash. Giving each tenant
its own view of the store keeps that cache (and garment analyses) from being shared between
retailers: one tenant can never learn, even by timing, that another saw the same photo, and
erasing a tenant's data is one prefix.
"""

from __future__ import annotations

from services.common.artifacts import ArtifactStore, validate_key
from services.gateway.jobs import OutputFormat

MEDIA_TYPES: dict[OutputFormat, str] = {"jpeg": "image/jpeg", "png": "image/png"}


class TenantArtifactStore:
    """An ArtifactStore whose keys all live under `tenants/<tenant>/` of another store."""

    def __init__(self, base: ArtifactStore, tenant: str) -> None:
        self.base = base
        self.prefix = validate_key(f"tenants/{tenant}") + "/"

    def put(self, key: str, data: bytes) -> None:
        self.base.put(self.prefix + validate_key(key), data)

    def get(self, key: str) -> bytes:
        return self.base.get(self.prefix + validate_key(key))

    def exists(self, key: str) -> bool:
        return self.base.exists(self.prefix + validate_key(key))

    def delete_prefix(self, prefix: str) -> int:
        return self.base.delete_prefix(self.prefix + prefix)

    def list(self, prefix: str = "") -> list[str]:
        return [key[len(self.prefix) :] for key in self.base.list(self.prefix + prefix)]

    def presigned_url(self, key: str) -> str | None:
        """A time-limited URL of the artifact that needs no credentials, when the store can make
        one (S3); None for local storage."""
        presign = getattr(self.base, "presigned_url", None)
        return presign(self.prefix + validate_key(key)) if presign else None


# Key layout inside a tenant's store. Job inputs are deleted once the job has finished.
def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def person_input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input/person"


def garment_input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input/garment"


def job_inputs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/input/"


def job_work_prefix(job_id: str) -> str:
    """Intermediates passed between a job's stages in distributed mode (the warped garment)."""
    return f"jobs/{job_id}/work/"


def result_key(job_id: str, output_format: OutputFormat) -> str:
    return f"jobs/{job_id}/result.{'jpg' if output_format == 'jpeg' else 'png'}"


def garment_image_key(garment_id: str) -> str:
    return f"garments/{garment_id}/image"


def garment_prefix(garment_id: str) -> str:
    return f"garments/{garment_id}/"


def person_image_key(person_id: str) -> str:
    """A registered person's photo, as received."""
    return f"persons/{person_id}/image"


def person_resource_prefix(person_id: str) -> str:
    return f"persons/{person_id}/"


def batch_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}/"


def batch_person_key(batch_id: str) -> str:
    """The photo a batch was sent with (none when it names a person_id); dropped when the batch ends."""
    return f"batches/{batch_id}/person"


# What a job asked to keep with `intermediates` (GET /v1/tryon/{id}/intermediates/{name}): name -> file.
INTERMEDIATES: dict[str, tuple[str, str]] = {
    "pose": ("pose.jpg", "image/jpeg"),  # the skeleton drawn over the photo
    "parse": ("parse.png", "image/png"),  # the LIP label map in LIP_PALETTE's colours
    "warped": ("warped.png", "image/png"),  # the garment warped onto the body, RGBA
}


def intermediate_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/intermediates/{INTERMEDIATES[name][0]}"
