"""Category detection (`--category auto`, the API's default) on real product images.

- every flat-lay of ../shared/data/viton (all tops): the share detected as upper, and the count
  of each wrong answer (lower, dress, or category_uncertain: the safe refusal);
- how many masks fell apart into pieces (a white top on white whose outline the backdrop's flood
  crossed), whatever their category;
- the garments of ../shared/data/photos, whose file names say their category;
- a contact sheet of the VITON tops taken for something else, under bench/overlays/garments/.

    .venv/bin/python bench/garment_category.py [--limit N] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared_data import SHARED_DATA, VITON

from services.common.errors import FitroomError
from services.common.imageio import read_image_file
from services.warp.garment import MIN_CATEGORY_CONFIDENCE, detect
from services.warp.segment import garment_mask

OVERLAYS = Path(__file__).resolve().parent / "overlays" / "garments"
TARGET_UPPER = 0.998
BROKEN = 0.9  # a mask whose largest piece is less than this share of it has fallen apart


def expected_category(name: str) -> str:
    """The category a ../shared/data/photos garment's file name says."""
    return "dress" if "_dress_" in name else "lower" if "_lower_" in name else "upper"


def classify(path: Path) -> tuple[str, str, float]:
    """(file, detected category or error code, confidence)."""
    try:
        category, confidence = detect(read_image_file(path, rgba=True))
    except FitroomError as exc:
        return path.name, exc.code, 0.0
    return path.name, category if confidence >= MIN_CATEGORY_CONFIDENCE else "category_uncertain", confidence


def largest_piece(path: Path) -> float:
    """The largest connected piece's share of the garment's mask (1.0 for one piece; 0 when no
    garment is found). A garment is one piece: a cut-out in several large pieces is one whose
    faint outline the backdrop's flood crossed (white tops on white)."""
    try:
        mask = garment_mask(read_image_file(path, rgba=True))[1]
    except FitroomError:
        return 0.0
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="only every k-th VITON cloth, this many")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    cloths = sorted((VITON / "train" / "cloth").iterdir())
    if args.limit:
        cloths = cloths[:: max(1, len(cloths) // args.limit)][: args.limit]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(classify, cloths, chunksize=64)
        pieces = pool.map(largest_piece, cloths, chunksize=64)
    seconds = time.perf_counter() - start
    answers = Counter(category for _, category, _ in results)
    upper = answers["upper"] / len(results)
    print(f"VITON flat-lays: {len(results)} (all tops) in {seconds:.0f} s")
    print("| answer | count | share |\n| --- | ---: | ---: |")
    for answer, count in answers.most_common():
        print(f"| {answer} | {count} | {count / len(results):.4f} |")
    print(f"upper: {upper:.4f} (target >= {TARGET_UPPER}): {'met' if upper >= TARGET_UPPER else 'NOT met'}")
    wrong = [(name, category, confidence) for name, category, confidence in results if category != "upper"]
    broken = [(name, answer) for (name, answer, _), share in zip(results, pieces, strict=True) if 0 < share < BROKEN]
    print(
        f"broken masks (largest piece under {BROKEN} of the mask): {len(broken)}, "
        f"{sum(answer == 'upper' for _, answer in broken)} of them still called upper"
    )
    for name, category, confidence in wrong:
        print(f"  {name}: {category} ({confidence:.2f})")

    photos = sorted((SHARED_DATA / "photos" / "garment").iterdir())
    print("\n| ../shared/data/photos garment | expected | detected | confidence |\n| --- | --- | --- | ---: |")
    right = 0
    for path in photos:
        name, category, confidence = classify(path)
        right += category == expected_category(name)
        print(f"| {name} | {expected_category(name)} | {category} | {confidence:.2f} |")
    print(f"right: {right}/{len(photos)}")

    if wrong:
        OVERLAYS.mkdir(parents=True, exist_ok=True)
        tiles = []
        for name, category, confidence in wrong[:48]:
            tile = cv2.resize(cv2.imread(str(VITON / "train" / "cloth" / name)), (96, 128))
            cv2.putText(tile, f"{category[:5]} {confidence:.2f}", (2, 124), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 255))
            tiles.append(tile)
        tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % 12)
        sheet = np.vstack([np.hstack(tiles[i : i + 12]) for i in range(0, len(tiles), 12)])
        cv2.imwrite(str(OVERLAYS / "viton_not_upper.jpg"), sheet)
        print(f"sheet of the tops taken for something else: {OVERLAYS / 'viton_not_upper.jpg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
