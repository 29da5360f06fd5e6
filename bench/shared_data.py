"""Where the benchmarks find ../shared/data, and how they pick VITON samples (one way for all)."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VITON = SHARED_DATA / "viton"
PERSON_PHOTOS = SHARED_DATA / "photos" / "person"


def select_ids(data: Path, limit: int) -> tuple[list[str], int]:
    """The person ids, sorted, every k-th so that `limit` of them spread over the sample; and k."""
    lines = (data / "train_pairs.txt").read_text().split()
    ids = sorted({name.removesuffix("_0.jpg") for name in lines if name.endswith("_0.jpg")})
    step = max(1, len(ids) // limit)
    return ids[::step][:limit], step
