"""Garment analyses cached in the artifact store under the garment image's content hash, so a
catalog garment is analysed once however many shoppers try it on."""

from __future__ import annotations

import numpy as np

from services.common.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    get_array,
    get_json,
    put_array,
    put_json,
    sha256_hex,
)
from services.common.contracts import Category, GarmentAnalysis
from services.warp.garment import analyse_garment

ANALYSIS_VERSION = 1  # bump when analyse_garment's output changes: old entries are then ignored


def analysis_key(image: np.ndarray, category: Category | None) -> str:
    """garment/<sha256 of the pixels and shape>/analysis-v<N>-<category or auto>."""
    digest = sha256_hex(np.ascontiguousarray(image).tobytes() + str(image.shape).encode())
    return f"garment/{digest}/analysis-v{ANALYSIS_VERSION}-{category or 'auto'}"


def cached_analysis(store: ArtifactStore, image: np.ndarray, category: Category | None = None) -> GarmentAnalysis:
    """The analysis of `image` from the store, or computed and stored. The JSON is written
    after the mask, so a JSON entry always has its mask."""
    key = analysis_key(image, category)
    try:
        record = get_json(store, f"{key}.json")
        packed = get_array(store, f"{key}.mask.npy")
    except ArtifactNotFound:
        analysis = analyse_garment(image, category)
        put_array(store, f"{key}.mask.npy", np.packbits(analysis.mask))
        put_json(store, f"{key}.json", analysis.model_dump())
        return analysis
    height, width = record["image_height"], record["image_width"]
    mask = np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)
    return GarmentAnalysis.model_validate({**record, "mask": mask})
