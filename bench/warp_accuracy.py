"""Garment analysis and warp accuracy on ../shared/data/viton (paired: person <id>_0 wears cloth <id>_1).

1. Garment mask IoU against viton/train/cloth-mask. About a tenth of those masks are broken (the
   tool that made them lost pink, orange and pale garments to speckle, and a few "cloth" images
   are crops of a person): a mask is "clean" when closing and hole-filling it changes it by at
   most 3% and it leaves a background. The mean is given over all masks and over clean ones.
2. Paired warp IoU: the warped garment's alpha (> 0.5) against the ground-truth upper-clothes
   region (LIP 5, 6, 7) of the person's parse, with the warp given our pose and our parse, and
   again with the ground-truth parse (pose still ours), to tell the two stages apart.
   Published for the learned GMM warps on VITON: CP-VTON about 0.79, CP-VTON+ about 0.84.

    .venv/bin/python bench/warp_accuracy.py --limit 500 [--learned NAME]

With --learned NAME, two more rows: the learned warp (warp_gmm installed as NAME) with our parse
and with the GT parse, measured on the same pairs (--limit of them from bench/viton_split.py's
validation split, at most its 1,000).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from shared_data import VALIDATION_PAIRS, VITON, validation_ids

from services.common.contracts import LIP, ParseResult
from services.common.errors import FitroomError
from services.common.imageio import encode_jpeg, read_image_file
from services.common.inference import embedded_backend
from services.learned import warp_model
from services.parser import stage as parser_stage
from services.pose import stage as pose_stage
from services.warp import stage as warp_stage
from services.warp.garment import analyse_garment

UPPER = (LIP["upper_clothes"], LIP["dress"], LIP["coat"])
OVERLAYS = Path(__file__).resolve().parent / "overlays" / "warp"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def clean_mask(gt: np.ndarray) -> bool:
    closed = cv2.morphologyEx(gt.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(closed)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return gt.sum() >= 0.97 * filled.sum() and gt.mean() < 0.97


def overlay(person: np.ndarray, rgba: np.ndarray, gt_upper: np.ndarray) -> np.ndarray:
    """The warped garment over the photo, beside the photo with the GT region in red and our outline in green."""
    alpha = rgba[..., 3:]
    composite = (rgba[..., :3] * 255 * alpha + person * (1 - alpha)).astype(np.uint8)
    marked = person.copy()
    marked[gt_upper] = (marked[gt_upper] * 0.5 + np.array([255, 0, 0]) * 0.5).astype(np.uint8)
    marked[cv2.Canny((alpha[..., 0] > 0.5).astype(np.uint8) * 255, 50, 150) > 0] = (0, 255, 0)
    return np.hstack([composite, marked])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=500, help=f"pairs of the {VALIDATION_PAIRS} held out")
    parser.add_argument("--overlays", type=int, default=6, help="save this many overlays under bench/overlays/warp")
    parser.add_argument("--learned", metavar="NAME", help="add rows for the learned warp's installed weights")
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    infer = embedded_backend()
    if args.learned:  # FITROOM_CPU_BF16: the learned networks in bf16 where the CPU has it natively
        print(f"learned networks in {'bf16' if infer.runs_bf16(warp_model(args.learned)) else 'fp32'}", flush=True)
    ids = validation_ids(args.limit)
    mask_all, mask_clean, warp_ours, warp_gt = [], [], [], []
    learned_ours: list[float] = []
    learned_gt: list[float] = []
    failures: dict[str, int] = {}
    OVERLAYS.mkdir(parents=True, exist_ok=True)
    sheet = []
    for n, pid in enumerate(ids):
        cloth = read_image_file(VITON / "train" / "cloth" / f"{pid}_1.jpg", rgba=True)
        gt_cloth = read_image_file(VITON / "train" / "cloth-mask" / f"{pid}_1.jpg")[..., 0] >= 128
        person = read_image_file(VITON / "train" / "image" / f"{pid}_0.jpg")
        gt_labels = np.array(Image.open(VITON / "train" / "image-parse" / f"{pid}_0.png"))
        gt_upper = np.isin(gt_labels, UPPER)
        clean = clean_mask(gt_cloth)
        try:
            garment = analyse_garment(cloth, "upper")
        except FitroomError as exc:
            failures[exc.code] = failures.get(exc.code, 0) + 1
            mask_all.append(0.0)
            mask_clean += [0.0] if clean else []
            for scores in (warp_ours, warp_gt, *((learned_ours, learned_gt) if args.learned else ())):
                scores.append(0.0)
            continue
        score = iou(garment.mask, gt_cloth)
        mask_all.append(score)
        if clean:
            mask_clean.append(score)
        try:
            pose = pose_stage.run(person, infer)
        except FitroomError as exc:
            failures[exc.code] = failures.get(exc.code, 0) + 1
            for scores in (warp_ours, warp_gt, *((learned_ours, learned_gt) if args.learned else ())):
                scores.append(0.0)
            continue
        ours = parser_stage.run(person, pose, infer)
        truth = ParseResult(image_width=ours.image_width, image_height=ours.image_height, labels=gt_labels)
        warped = warp_stage.run(cloth, garment, pose, ours, infer)
        warp_ours.append(iou(warped.rgba[..., 3] > 0.5, gt_upper))
        warped_gt = warp_stage.run(cloth, garment, pose, truth, infer)
        warp_gt.append(iou(warped_gt.rgba[..., 3] > 0.5, gt_upper))
        if args.learned:
            learned = warp_stage.learned_warp(warped.rgba, pose, ours, garment.category, infer, args.learned)
            learned_ours.append(iou(learned[..., 3] > 0.5, gt_upper))
            learned_truth = warp_stage.learned_warp(warped_gt.rgba, pose, truth, garment.category, infer, args.learned)
            learned_gt.append(iou(learned_truth[..., 3] > 0.5, gt_upper))
        if n < args.overlays:
            sheet.append(np.hstack([cloth[..., :3], overlay(person, warped.rgba, gt_upper)]))
        if (n + 1) % 100 == 0:
            print(f"  {n + 1}/{len(ids)}", file=sys.stderr)
    if sheet:
        (OVERLAYS / "viton_paired.jpg").write_bytes(encode_jpeg(np.vstack(sheet)))

    def row(name: str, values: list[float], target: str) -> str:
        v = np.array(values)
        return f"| {name} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | {np.percentile(v, 10):.3f} | {target} |"

    print(f"VITON pairs: {len(ids)} (of the validation split); failures: {failures or 'none'}")
    print("| measure | n | mean | median | p10 | target |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(row("garment mask IoU, all cloth-masks", mask_all, "mean >= 0.95"))
    print(row("garment mask IoU, clean cloth-masks", mask_clean, "mean >= 0.95"))
    print(row("paired warp IoU, our pose + our parse", warp_ours, "mean >= 0.82"))
    print(row("paired warp IoU, our pose + GT parse", warp_gt, "(stage split)"))
    if args.learned:
        print(row(f"learned warp ({args.learned}) IoU, our pose + our parse", learned_ours, "mean >= 0.85"))
        print(row(f"learned warp ({args.learned}) IoU, our pose + GT parse", learned_gt, "(stage split)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
