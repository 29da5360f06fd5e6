"""Try-on quality on ../shared/data/viton, paired: person <id>_0 wearing its own cloth <id>_1, so
the person photo itself is the ground truth.

Measures, as the VITON / CP-VTON evaluations report them: SSIM on grayscale (Gaussian window,
sigma 1.5, as Wang et al.) and PSNR over the whole image; and the figure that tells methods
apart, SSIM inside the bounding box of the ground-truth upper-clothes region. Two references
run in the same pass: the garment's mean colour pasted into the exact ground-truth region
(a perfectly shaped flat fill) and a grey fill of that region.

Also saves a contact sheet of unpaired try-ons (persons x garments of ../shared/data/photos)
under bench/overlays/tryon/ for people to look at.

    .venv/bin/python bench/tryon_quality.py --limit 500

With --learned NAME, a row for the learned path (warp_gmm and tryon_generator installed as NAME
by `fitroom models install`, docs/TRAINING.md) beside the default in the same run, a fourth
column in the paired overlay and a second contact sheet (unpaired_sheet_learned.jpg). Weights
trained on VITON must have been trained with these ids held out: --limit picks from
bench/viton_split.py's validation split (at most its 1,000 pairs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from shared_data import SHARED_DATA, VALIDATION_PAIRS, VITON, validation_ids
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from services.common.artifacts import LocalArtifactStore
from services.common.contracts import LIP, Category
from services.common.errors import FitroomError
from services.common.imageio import decode_image, encode_jpeg, encode_png, read_image_file
from services.common.inference import embedded_backend
from services.learned import tryon_model
from services.pipeline import Pipeline

UPPER = (LIP["upper_clothes"], LIP["dress"], LIP["coat"])
OVERLAYS = Path(__file__).resolve().parent / "overlays" / "tryon"
SHEET_PERSONS = ("vitonhd_00008_00", "vitonhd_03191_00", "catvton_Simon_1", "dresscode_048462_0")
SHEET_GARMENTS = ("vitonhd_02305_00", "vitonhd_00126_00", "dresscode_upper_049805_1", "magicclothing_top_t1")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    grey_a, grey_b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    return float(
        structural_similarity(
            grey_a, grey_b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def box_of(mask: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def scores(result: np.ndarray, truth: np.ndarray, box: tuple[slice, slice]) -> tuple[float, float, float]:
    return ssim(result, truth), ssim(result[box], truth[box]), float(peak_signal_noise_ratio(truth, result))


def contact_sheet(pipelines: list[Pipeline], name: str = "unpaired_sheet.jpg") -> Path | None:
    """Persons (rows) x garments of ../shared/data/photos; with two pipelines each garment gets two
    columns side by side (the default, then the learned path) on the same pairs."""
    if not (SHARED_DATA / "photos").exists():
        return None
    photos = SHARED_DATA / "photos"
    persons = [read_image_file(next((photos / "person").glob(f"{n}.*"))) for n in SHEET_PERSONS]
    garments = [read_image_file(next((photos / "garment").glob(f"{n}.*")), rgba=True) for n in SHEET_GARMENTS]
    return draw_sheet(pipelines, persons, [(g, None) for g in garments], OVERLAYS / name)


def draw_sheet(
    pipelines: list[Pipeline],
    persons: list[np.ndarray],
    garments: list[tuple[np.ndarray, Category | None]],
    path: Path,
    height: int = 384,
) -> Path:
    """The sheet: garment thumbnails (on white) over their columns, then one row per person: the
    photo and each garment's try-on (of the category given, None: detected) by each pipeline, all
    `height` pixels high; a try-on that fails shows its error code."""
    rows = []
    for person in persons:
        width = round(person.shape[1] * height / person.shape[0])
        fit = lambda x, w=width: cv2.resize(x, (w, height), interpolation=cv2.INTER_AREA)  # noqa: E731
        row = [fit(person)]
        for garment, category in garments:
            for pipeline in pipelines:
                try:
                    row.append(fit(pipeline.tryon(person, garment, category).image))
                except FitroomError as exc:
                    blank = np.full((height, width, 3), 255, np.uint8)
                    cv2.putText(blank, exc.code, (5, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 0, 0), 1)
                    row.append(blank)
        rows.append(np.hstack(row))
    on_white = [decode_image(encode_png(g)) for g, _ in garments]  # transparency on white, as uploads are
    thumbnails = [
        cv2.resize(g, (round(g.shape[1] * 160 / g.shape[0]), 160), interpolation=cv2.INTER_AREA) for g in on_white
    ]
    cell = rows[0].shape[1] // (1 + len(garments) * len(pipelines))  # thumbnails over their columns
    thumbnails = [
        np.pad(t, ((0, 0), (0, max(0, cell * len(pipelines) - t.shape[1])), (0, 0)), constant_values=255)[
            :, : cell * len(pipelines)
        ]
        for t in thumbnails
    ]
    width = max(r.shape[1] for r in rows)
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    strip = pad(np.hstack([np.full((160, cell, 3), 255, np.uint8), *thumbnails]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(np.vstack([strip, *[pad(r) for r in rows]]), quality=88))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=500, help=f"pairs of the {VALIDATION_PAIRS} held out")
    parser.add_argument("--overlays", type=int, default=8, help="paired results saved under bench/overlays/tryon")
    parser.add_argument("--no-sheet", action="store_true", help="skip the unpaired contact sheet")
    parser.add_argument("--learned", metavar="NAME", help="add a row with the learned path's installed weights")
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(LocalArtifactStore(tmp), embedded_backend())
        if args.learned:  # FITROOM_CPU_BF16: the learned networks in bf16 where the CPU has it natively
            print(
                f"learned networks in {'bf16' if pipeline.infer.runs_bf16(tryon_model(args.learned)) else 'fp32'}",
                flush=True,
            )
        refined_pipeline = Pipeline(pipeline.store, pipeline.infer, args.learned) if args.learned else None
        ids = validation_ids(args.limit)
        rows: dict[str, list[tuple[float, float, float]]] = {"ours": [], "mean colour": [], "grey": []}
        if refined_pipeline:
            rows[f"learned ({args.learned})"] = []
        failures: dict[str, int] = {}
        examples = []
        for n, pid in enumerate(ids):
            person = read_image_file(VITON / "train" / "image" / f"{pid}_0.jpg")
            cloth = read_image_file(VITON / "train" / "cloth" / f"{pid}_1.jpg", rgba=True)
            cloth_mask = read_image_file(VITON / "train" / "cloth-mask" / f"{pid}_1.jpg")[..., 0] >= 128
            gt_upper = np.isin(np.array(Image.open(VITON / "train" / "image-parse" / f"{pid}_0.png")), UPPER)
            if not gt_upper.any():
                continue
            box = box_of(gt_upper)
            mean_fill, grey_fill = person.copy(), person.copy()
            mean_fill[gt_upper] = cloth[..., :3][cloth_mask].mean(axis=0) if cloth_mask.any() else 128
            grey_fill[gt_upper] = 128
            rows["mean colour"].append(scores(mean_fill, person, box))
            rows["grey"].append(scores(grey_fill, person, box))
            try:
                result = pipeline.tryon(person, cloth, "upper").image
                refined = refined_pipeline.tryon(person, cloth, "upper").image if refined_pipeline else None
            except FitroomError as exc:
                failures[exc.code] = failures.get(exc.code, 0) + 1
                result = person.copy()
                result[gt_upper] = 128  # a failure scores as the grey fill
                refined = result if refined_pipeline else None
            rows["ours"].append(scores(result, person, box))
            if refined is not None:
                rows[f"learned ({args.learned})"].append(scores(refined, person, box))
            if len(examples) < args.overlays:
                examples.append(
                    np.hstack([cloth[..., :3], person, result, *([refined] if refined is not None else [])])
                )
            if (n + 1) % 100 == 0:
                print(f"  {n + 1}/{len(ids)}", file=sys.stderr)
        OVERLAYS.mkdir(parents=True, exist_ok=True)
        if examples:
            (OVERLAYS / "viton_paired.jpg").write_bytes(encode_jpeg(np.vstack(examples), quality=88))
        sheet = None if args.no_sheet else contact_sheet([pipeline])
        if refined_pipeline and not args.no_sheet:
            contact_sheet([pipeline, refined_pipeline], "unpaired_sheet_learned.jpg")

    reference = np.array(rows["mean colour"]).mean(axis=0)
    print(f"VITON pairs: {len(rows['ours'])} (of the validation split); failures: {failures or 'none'}")
    print(
        "| method | box SSIM mean | box SSIM median | box SSIM p90 | whole SSIM mean | PSNR mean dB "
        "| box SSIM × mean-colour fill |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, values in rows.items():
        v = np.array(values)
        print(
            f"| {name} | {v[:, 1].mean():.3f} | {np.median(v[:, 1]):.3f} | {np.percentile(v[:, 1], 90):.3f} "
            f"| {v[:, 0].mean():.3f} | {v[:, 2].mean():.2f} | {v[:, 1].mean() / reference[1]:.2f} |"
        )
    print("targets: box SSIM >= 0.75, whole SSIM >= 0.90")
    if sheet:
        print(f"contact sheet: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
