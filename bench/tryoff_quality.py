"""Try-off quality on ../shared/data/viton's validation split (bench/viton_split.py's ids): person
<id>_0 in, its flat-lay <id>_1 as the answer.

Canonical alignment: each flat-lay (ours, RGBA; VITON's cloth with its cloth-mask thresholded at
128) is cropped to its mask's bounding box, scaled to fit (aspect kept) inside CANVAS less MARGIN
on every side, centred, and composited on white. On that common canvas: the garment mask's IoU,
and grayscale SSIM of the whole canvas (Gaussian window, sigma 1.5, as bench/tryon_quality.py).
Reference in the same run: the canonical layout's own mask (short sleeves) filled with the true
flat-lay's mean colour, i.e. a fixed shape with a perfect flat colour.

Also draws bench/overlays/tryoff/sheet.jpg: 8 validation persons (photo | true flat-lay | ours,
default | the learned path's column, not trained yet), and round trips on ../shared/data/photos:
a garment taken off person A and tried on person B with the try-on pipeline.

    .venv/bin/python bench/tryoff_quality.py --limit 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from shared_data import PERSON_PHOTOS, VITON, select_ids
from skimage.metrics import structural_similarity
from viton_split import VALIDATION_PAIRS

from services.common.artifacts import LocalArtifactStore
from services.common.errors import FitroomError
from services.common.imageio import encode_jpeg, read_image_file
from services.common.inference import embedded_backend
from services.pipeline import Pipeline
from services.warp import tryoff

CANVAS = (192, 256)  # width, height: VITON's
MARGIN = 8
SHEET = Path(__file__).resolve().parent / "overlays" / "tryoff" / "sheet.jpg"
ROUND_TRIPS = (("vitonhd_00008_00", "catvton_Simon_1"), ("boostcamp_upper_short_Man_b", "vitonhd_03191_00"))


def aligned(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The garment cropped to its mask's box, fitted into CANVAS less MARGIN, on white; and its mask."""
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    crop_rgb, crop_mask = rgb[box], mask[box].astype(np.float32)
    scale = min((CANVAS[0] - 2 * MARGIN) / crop_rgb.shape[1], (CANVAS[1] - 2 * MARGIN) / crop_rgb.shape[0])
    size = (max(1, round(crop_rgb.shape[1] * scale)), max(1, round(crop_rgb.shape[0] * scale)))
    small_rgb = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small_mask = cv2.resize(crop_mask, size, interpolation=cv2.INTER_AREA)
    canvas = np.full((CANVAS[1], CANVAS[0], 3), 255.0, np.float32)
    alpha = np.zeros((CANVAS[1], CANVAS[0]), np.float32)
    x0, y0 = (CANVAS[0] - size[0]) // 2, (CANVAS[1] - size[1]) // 2
    region = (slice(y0, y0 + size[1]), slice(x0, x0 + size[0]))
    canvas[region] = small_rgb * small_mask[..., None] + canvas[region] * (1 - small_mask[..., None])
    alpha[region] = small_mask
    return canvas.round().astype(np.uint8), alpha >= 0.5


def scores(ours: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    (rgb_a, mask_a), (rgb_b, mask_b) = ours, truth
    iou = float((mask_a & mask_b).sum() / max(1, (mask_a | mask_b).sum()))
    grey_a, grey_b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb_a, rgb_b))
    ssim = structural_similarity(
        grey_a, grey_b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return iou, float(ssim)


def truth_of(pair_id: str) -> tuple[np.ndarray, np.ndarray]:
    cloth = read_image_file(VITON / "train" / "cloth" / f"{pair_id}_1.jpg")
    mask = np.array(Image.open(VITON / "train" / "cloth-mask" / f"{pair_id}_1.jpg").convert("L")) >= 128
    return cloth, mask


def on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


def table(rows: dict[str, list[float]]) -> str:
    lines = ["| figure | mean | median | p90 | n |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, values in rows.items():
        v = np.array(values)
        lines.append(f"| {name} | {v.mean():.3f} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} | {len(v)} |")
    return "\n".join(lines)


def cell(image: np.ndarray, label: str = "") -> np.ndarray:
    """One sheet cell: the image fitted into CANVAS on white, with a caption."""
    scale = min(CANVAS[0] / image.shape[1], CANVAS[1] / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    out = np.full((CANVAS[1], CANVAS[0], 3), 255, np.uint8)
    x0, y0 = (CANVAS[0] - size[0]) // 2, (CANVAS[1] - size[1]) // 2
    out[y0 : y0 + size[1], x0 : x0 + size[0]] = cv2.resize(image[..., :3], size, interpolation=cv2.INTER_AREA)
    if label:
        cv2.putText(out, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 0, 0), 1, cv2.LINE_AA)
    return out


def not_trained() -> np.ndarray:
    out = np.full((CANVAS[1], CANVAS[0], 3), 235, np.uint8)
    for n, line in enumerate(("learned:", "not trained yet")):
        cv2.putText(out, line, (10, 120 + 18 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help=f"pairs, every k-th of the {VALIDATION_PAIRS} held out")
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    # The validation split's ids, thinned evenly to --limit (every id of a smaller limit is in the split).
    ids, _ = select_ids(VITON, min(args.limit, VALIDATION_PAIRS))
    pipeline = Pipeline(LocalArtifactStore(tempfile.mkdtemp()), embedded_backend())
    rows: dict[str, list[float]] = {
        "mask IoU, default": [],
        "grey SSIM, default": [],
        "mask IoU, reference: canonical layout": [],
        "grey SSIM, reference: canonical layout in the true mean colour": [],
    }
    failed: dict[str, int] = {}
    sheet_rows = []
    start = time.perf_counter()
    for pair_id in ids:
        person = read_image_file(VITON / "train" / "image" / f"{pair_id}_0.jpg")
        truth = truth_of(pair_id)
        truth_aligned = aligned(*truth)
        layout = tryoff.canonical_layout("upper", "short", (person.shape[1], person.shape[0]))
        flat = np.full((*layout.mask.shape, 3), truth[0][truth[1]].mean(axis=0).round(), np.uint8)
        reference = scores(aligned(flat, layout.mask), truth_aligned)
        rows["mask IoU, reference: canonical layout"].append(reference[0])
        rows["grey SSIM, reference: canonical layout in the true mean colour"].append(reference[1])
        try:
            result = pipeline.tryoff(person, "upper")
        except FitroomError as exc:
            failed[exc.code] = failed.get(exc.code, 0) + 1
            continue
        iou, ssim = scores(aligned(result.rgba[..., :3], result.rgba[..., 3] > 0), truth_aligned)
        rows["mask IoU, default"].append(iou)
        rows["grey SSIM, default"].append(ssim)
        if len(sheet_rows) < 8:
            sheet_rows.append([cell(person, pair_id), cell(truth[0], "true"), cell(on_white(result.rgba), "default")])
    print(f"{len(ids)} validation pairs in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}")
    print(table(rows))

    grid = [np.hstack([*r, not_trained()]) for r in sheet_rows]
    if PERSON_PHOTOS.exists():
        for giver, wearer in ROUND_TRIPS:
            a = read_image_file(next(PERSON_PHOTOS.glob(f"{giver}.*")))
            b = read_image_file(next(PERSON_PHOTOS.glob(f"{wearer}.*")))
            extracted = pipeline.tryoff(a, "upper").rgba
            worn = pipeline.tryon(b, extracted, "upper").image
            grid.append(
                np.hstack([cell(a, "A"), cell(on_white(extracted), "taken off A"), cell(b, "B"), cell(worn, "on B")])
            )
    SHEET.parent.mkdir(parents=True, exist_ok=True)
    SHEET.write_bytes(encode_jpeg(np.vstack(grid)))
    print(f"sheet: {SHEET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
