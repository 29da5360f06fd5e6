"""Garment analyses cached in the artifact store under the garment image's content hash, so a
catalog garment is analysed once however many shoppers try it on."""

from __future__ import annotations

import numpy as np

from services.common.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    get_array,
    get_json,
    image_digest,
    put_array,
    put_json,
)
from services.common.contracts import Category, GarmentAnalysis
from services.warp.garment import analyse_garment

ANALYSIS_VERSION = 3  # bump when analyse_garment's output changes: old entries are then ignored


def garment_prefix(image: np.ndarray) -> str:
    """Where everything derived from this garment image is stored (erase it with delete_prefix)."""
    return f"garment/{image_digest(image)}/"


def analysis_key(image: np.ndarray, category: Category | None) -> str:
    """garment/<digest of the pixels>/analysis-v<N>-<category or auto>."""
    return f"{garment_prefix(image)}analysis-v{ANALYSIS_VERSION}-{category or 'auto'}"


def cached_analysis(
    store: ArtifactStore, image: np.ndarray, category: Category | None = None
) -> tuple[GarmentAnalysis, bool]:
    """The analysis of `image` and whether it came from the store (else it was computed and
    stored). The JSON is written after the mask, so a JSON entry always has its mask."""
    key = analysis_key(image, category)
    try:
        record = get_json(store, f"{key}.json")
        packed = get_array(store, f"{key}.mask.npy")
    except ArtifactNotFound:
        analysis = analyse_garment(image, category)
        put_array(store, f"{key}.mask.npy", np.packbits(analysis.mask))
        put_json(store, f"{key}.json", analysis.model_dump())
        return analysis, False
    height, width = record["image_height"], record["image_width"]
    mask = np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)
    return GarmentAnalysis.model_validate({**record, "mask": mask}), True
