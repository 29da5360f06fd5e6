"""Try-off quality on ../shared/data/viton's validation split (bench/viton_split.py's ids): person
<id>_0 in, its flat-lay <id>_1 as the answer.

Canonical alignment (services/warp/tryoff.py `aligned` and `scores`, which training's held-out
figures use too): each flat-lay (ours, RGBA; VITON's cloth with its cloth-mask thresholded at
128) is cropped to its mask's bounding box, scaled to fit (aspect kept) inside CANVAS less MARGIN
on every side, centred, and composited on white. On that common canvas: the garment mask's IoU,
and grayscale SSIM of the whole canvas (Gaussian window, sigma 1.5, as bench/tryon_quality.py).
With --learned NAME, the learned try-off installed as NAME (`fitroom models install`) is scored
beside the default in the same run, on the same photos.
Reference in the same run: the canonical layout's own mask (short sleeves) filled with the true
flat-lay's mean colour, i.e. a fixed shape with a perfect flat colour.

Also draws bench/overlays/tryoff/sheet.jpg: 8 validation persons (photo | true flat-lay | ours,
default | ours, learned), and round trips on ../shared/data/photos: a garment taken off person A
(by the default, and by the learned path with --learned) and tried on person B with the try-on
pipeline.

    .venv/bin/python bench/tryoff_quality.py --limit 200 [--learned NAME]
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
from shared_data import PERSON_PHOTOS, VALIDATION_PAIRS, VITON, validation_ids

from services.common.artifacts import LocalArtifactStore
from services.common.errors import FitroomError
from services.common.imageio import encode_jpeg, read_image_file
from services.common.inference import embedded_backend
from services.learned import tryoff_model
from services.pipeline import Pipeline
from services.warp import tryoff
from services.warp.tryoff import CANVAS, aligned, scores

SHEET = Path(__file__).resolve().parent / "overlays" / "tryoff" / "sheet.jpg"
ROUND_TRIPS = (("vitonhd_00008_00", "catvton_Simon_1"), ("boostcamp_upper_short_Man_b", "vitonhd_03191_00"))


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


def not_run(why: str) -> np.ndarray:
    out = np.full((CANVAS[1], CANVAS[0], 3), 235, np.uint8)
    for n, line in enumerate(("learned:", why)):
        cv2.putText(out, line, (10, 120 + 18 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help=f"pairs of the {VALIDATION_PAIRS} held out")
    parser.add_argument("--learned", help="also the learned try-off installed under this name (fitroom models install)")
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    ids = validation_ids(args.limit)
    store, infer = LocalArtifactStore(tempfile.mkdtemp()), embedded_backend()
    if args.learned:  # FITROOM_CPU_BF16: the learned networks in bf16 where the CPU has it natively
        print(f"learned networks in {'bf16' if infer.runs_bf16(tryoff_model(args.learned)) else 'fp32'}", flush=True)
    pipeline = Pipeline(store, infer)
    learned = Pipeline(store, infer, learned_tryoff=args.learned) if args.learned else None
    rows: dict[str, list[float]] = {
        "mask IoU, default": [],
        "grey SSIM, default": [],
        **({f"mask IoU, learned ({args.learned})": [], f"grey SSIM, learned ({args.learned})": []} if learned else {}),
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
        iou, ssim = scores(aligned(on_white(result.rgba), result.rgba[..., 3] >= 128), truth_aligned)
        rows["mask IoU, default"].append(iou)
        rows["grey SSIM, default"].append(ssim)
        learned_cell = not_run("not asked (--learned)")
        if learned is not None:
            ours = learned.tryoff(person, "upper").rgba  # the same photo: refused by the default, refused here too
            iou, ssim = scores(aligned(on_white(ours), ours[..., 3] >= 128), truth_aligned)
            rows[f"mask IoU, learned ({args.learned})"].append(iou)
            rows[f"grey SSIM, learned ({args.learned})"].append(ssim)
            learned_cell = cell(on_white(ours), f"learned: {args.learned}")
        if len(sheet_rows) < 8:
            sheet_rows.append(
                [cell(person, pair_id), cell(truth[0], "true"), cell(on_white(result.rgba), "default"), learned_cell]
            )
    print(f"{len(ids)} validation pairs in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}")
    print(table(rows))

    grid = [np.hstack(r) for r in sheet_rows]
    if PERSON_PHOTOS.exists():
        for giver, wearer in ROUND_TRIPS:
            a = read_image_file(next(PERSON_PHOTOS.glob(f"{giver}.*")))
            b = read_image_file(next(PERSON_PHOTOS.glob(f"{wearer}.*")))
            for name, source in (("default", pipeline), (f"learned: {args.learned}", learned)):
                if source is None:
                    continue
                extracted = source.tryoff(a, "upper").rgba
                worn = pipeline.tryon(b, extracted, "upper").image
                cells = [cell(a, "A"), cell(on_white(extracted), f"off A, {name}"), cell(b, "B"), cell(worn, "on B")]
                grid.append(np.hstack(cells))
    SHEET.parent.mkdir(parents=True, exist_ok=True)
    SHEET.write_bytes(encode_jpeg(np.vstack(grid)))
    print(f"sheet: {SHEET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
