"""Where the benchmarks find ../shared/data, and how they pick VITON samples (one way for all)."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VITON = SHARED_DATA / "viton"
PERSON_PHOTOS = SHARED_DATA / "photos" / "person"
VALIDATION_PAIRS = 1000  # the learned path's validation split: select_ids(VITON, VALIDATION_PAIRS)


def select_ids(data: Path, limit: int) -> tuple[list[str], int]:
    """The person ids, sorted, every k-th so that `limit` of them spread over the sample; and k."""
    lines = (data / "train_pairs.txt").read_text().split()
    ids = sorted({name.removesuffix("_0.jpg") for name in lines if name.endswith("_0.jpg")})
    step = max(1, len(ids) // limit)
    return ids[::step][:limit], step


def validation_ids(limit: int) -> list[str]:
    """`limit` ids (at most VALIDATION_PAIRS) of the learned path's validation split
    (bench/viton_split.py, held out of `fitroom train`), spread evenly over it. Not select_ids(VITON,
    limit): for a limit that does not divide the split (200, 300) its every k-th id is mostly a
    training id."""
    split, _ = select_ids(VITON, VALIDATION_PAIRS)
    count = min(limit, len(split))
    return [split[i * len(split) // count] for i in range(count)]
