"""IoU of the parser stage against VITON's LIP label maps and the annotated photos, and the agnostic check.

Each image goes through our pose stage, then the parser (--method ours, category "upper"). Two
references: `gt` returns the ground truth as the prediction (a self-check: IoU 1.0, coverage 100%)
and `baseline` labels from the pose alone (person mask between shoulders and hips = upper-clothes,
a disc around the nose = face). VITON images: the ids of viton/train_pairs.txt, sorted, every k-th
(as bench/pose_accuracy.py). An image with no person detected is scored as all background.

IoU per group of LIP ids, in GT and prediction alike (dress 6 and coat 7 count as upper-clothes),
pooled: sum of intersections / sum of unions over all images; per-image mean over the images where
the group is in GT or prediction. GT ids in no group (torso skin, shoes, ...) count against any
group the prediction puts there. The DressCode maps are converted to LIP ids (DRESSCODE_TO_LIP).
Note: VITON's GT labels the neck and neckline skin background (0), almost never torso_skin (10), so
a parser that labels them 10 or face loses a little background or face IoU on VITON.

    .venv/bin/python bench/parse_accuracy.py --limit 1000 --time
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from shared_data import SHARED_DATA, select_ids

from services.common.config import get_settings
from services.common.contracts import LANDMARK_INDEX, LIP, LIP_LABELS, LIP_PALETTE, PoseResult
from services.common.errors import NoPersonDetected
from services.common.imageio import encode_png, read_image_file
from services.common.inference import Infer, embedded_backend
from services.pose import stage as pose_stage

DATA = SHARED_DATA
GROUPS: dict[str, tuple[int, ...]] = {"background": (0,), "hair": (2,), "face": (13,), "upper-clothes": (5, 6, 7),
                                      "arms": (14, 15), "lower garment": (9, 12), "legs": (16, 17)}  # fmt: skip
UPPER, FACE_HAIR = GROUPS["upper-clothes"], (13, 2)
NONE = len(GROUPS)  # group index of the ids in no group
GROUP_OF = np.full(256, NONE, np.int64)
for _k, _ids in enumerate(GROUPS.values()):
    GROUP_OF[list(_ids)] = _k
IGNORE = 255  # GT pixels left out of every count (no LIP class for them)
# DressCode label maps -> LIP, checked by overlaying both photos' maps on them: 11 "head" is the face
# and the neck skin; 14/15, 12/13 and 9/10 are the person's left/right as in LIP. Both skirts (a
# pencil skirt and a mini) carry 6, "pants": the 5/6 split is unreliable, the lower garment merges it.
# LIP has no belt or bag: ignored.
DRESSCODE_TO_LIP = {0: 0, 1: 1, 2: 2, 3: 4, 4: 5, 5: 12, 6: 9, 7: 6, 8: IGNORE, 9: 18, 10: 19, 11: 13, 12: 16,
                    13: 17, 14: 14, 15: 15, 16: IGNORE, 17: 11}  # fmt: skip
PHOTOS = ("vitonhd_03191_00", "dresscode_048462_0", "dresscode_050855_0")
# Our torso-skin (10, the neck and neckline) in each ground truth's own convention: VITON's
# parser has no such class and leaves the neck background; DressCode's "head" includes the neck.
NECK_AS = {"viton": 0, "dresscode": 13, "vitonhd": 10}


def in_convention(pred: Prediction, source: str) -> Prediction:
    if pred is None:
        return None
    labels, agnostic, seconds = pred
    return np.where(labels == 10, NECK_AS[source], labels).astype(labels.dtype), agnostic, seconds


COLOURS = np.full((256, 3), 255, np.uint8)  # white: ignored or unknown ids
COLOURS[: len(LIP_PALETTE)] = LIP_PALETTE
# (labels, agnostic or None, parse seconds), or None when no person was detected.
Prediction = tuple[np.ndarray, np.ndarray | None, float] | None


def baseline(pose: PoseResult) -> tuple[np.ndarray, np.ndarray]:
    """Pose-only labels (upper-clothes, face, background) and an upper-body agnostic mask."""
    pts = pose.landmark_array()
    ys, xs = np.mgrid[: pose.image_height, : pose.image_width]
    person = pose.mask > 0.5
    shoulders = pts[[LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]], :2]
    hip_y = pts[[LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]], 1].mean()
    shoulder_y, torso = shoulders[:, 1].mean(), hip_y - shoulders[:, 1].mean()
    nose = pts[LANDMARK_INDEX["nose"], :2]
    face = person & (np.hypot(xs - nose[0], ys - nose[1]) <= 0.25 * abs(shoulders[0, 0] - shoulders[1, 0]))
    labels = np.zeros(person.shape, np.uint8)
    labels[person & (ys >= shoulder_y) & (ys <= hip_y)] = LIP["upper_clothes"]
    labels[face] = LIP["face"]
    agnostic = person & (ys >= shoulder_y - 0.15 * torso) & (ys <= hip_y + 0.1 * torso) & ~face
    return labels, agnostic


def predictor(method: str, infer: Infer) -> Callable[[np.ndarray, np.ndarray], Prediction]:
    """predict(image, gt) for the method; pose runs untimed, the parse step is timed."""
    if method == "ours":
        try:
            from services.parser.stage import run as parse
        except ImportError as e:
            sys.exit(f"--method ours needs services.parser.stage ({e}); try --method gt or baseline")

    def predict(image: np.ndarray, gt: np.ndarray) -> Prediction:
        if method == "gt":
            return gt.copy(), np.isin(gt, UPPER), 0.0
        try:
            pose = pose_stage.run(image, infer)
        except NoPersonDetected:
            return None
        start = time.perf_counter()
        if method == "baseline":
            labels, agnostic = baseline(pose)
        else:
            result = parse(image, pose, infer, category="upper")
            labels, agnostic = result.labels, result.agnostic
        return labels, agnostic, time.perf_counter() - start

    return predict


def confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(groups + 1)^2 pixel counts, GT group x predicted group; IGNORE pixels left out."""
    keep = gt != IGNORE
    n = NONE + 1
    return np.bincount(GROUP_OF[gt[keep]] * n + GROUP_OF[pred[keep]], minlength=n * n).reshape(n, n)


def ious(matrix: np.ndarray) -> np.ndarray:
    """IoU per group, NaN where the group is in neither GT nor prediction."""
    inter = np.diag(matrix)[:NONE].astype(np.float64)
    union = matrix.sum(axis=0)[:NONE] + matrix.sum(axis=1)[:NONE] - inter
    return np.divide(inter, union, out=np.full(NONE, np.nan), where=union > 0)


def save_overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, height: int | None) -> None:
    """image | ground truth | ours, side by side; photos downscaled to `height` px."""
    panels = [image, COLOURS[gt], COLOURS[pred]]
    if height is not None and image.shape[0] > height:
        size = (round(image.shape[1] * height / image.shape[0]), height)
        panels = [cv2.resize(p, size, interpolation=cv2.INTER_AREA if i == 0 else cv2.INTER_NEAREST)
                  for i, p in enumerate(panels)]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(np.hstack(panels)))


def read_labels(path: Path, mapping: dict[int, int] | None = None) -> np.ndarray:
    labels = np.array(Image.open(path))  # palette PNG: the pixel values are the label ids
    if mapping is None:
        return labels
    lut = np.full(256, IGNORE, np.uint8)
    lut[list(mapping)] = list(mapping.values())
    return lut[labels]


def fmt(x: float) -> str:
    return "—" if np.isnan(x) else f"{x:.3f}"


@dataclass
class Tally:
    """Pooled and per-image confusion, agnostic counts, GT ids in no group, parse times."""

    pooled: np.ndarray = field(default_factory=lambda: np.zeros((NONE + 1, NONE + 1), np.int64))
    per_image: list[np.ndarray] = field(default_factory=list)
    agnostic: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))  # [hits, totals]
    outside: dict[int, list[int]] = field(default_factory=dict)  # GT id in no group -> [pixels, images]
    no_person: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, gt: np.ndarray, out: Prediction) -> np.ndarray:
        """Score one prediction (None: no person, scored as all background); returns its labels."""
        self.no_person += out is None
        pred, agnostic, took = out or (np.zeros_like(gt), None, None)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} but GT {gt.shape}")
        matrix = confusion(gt, pred)
        self.pooled += matrix
        self.per_image.append(ious(matrix))
        self.seconds += [] if took is None else [took]
        for k, ids in enumerate((UPPER, FACE_HAIR)):
            region = np.isin(gt, ids)
            self.agnostic[:, k] += (0 if agnostic is None else (region & agnostic).sum(), region.sum())
        counts = np.bincount(gt.ravel(), minlength=256)
        for label in np.flatnonzero((counts > 0) & (GROUP_OF == NONE) & (np.arange(256) != IGNORE)):
            pixels, images = self.outside.get(int(label), (0, 0))
            self.outside[int(label)] = [pixels + int(counts[label]), images + 1]
        return pred


def viton_tables(tally: Tally) -> str:
    per_image = np.array(tally.per_image)
    pooled, mean, present = ious(tally.pooled), np.nanmean(per_image, axis=0), (~np.isnan(per_image)).sum(axis=0)
    rows = [
        "| group | LIP ids | IoU pooled | IoU per-image mean | images (group in GT or pred) |",
        "| --- | --- |" + " ---: |" * 3,
    ]
    for k, (name, ids) in enumerate(GROUPS.items()):
        rows.append(f"| {name} | {'+'.join(map(str, ids))} | {fmt(pooled[k])} | {fmt(mean[k])} | {present[k]} |")
    rows.append(f"| **mean of {NONE}** | | **{fmt(np.nanmean(pooled))}** | **{fmt(np.nanmean(mean))}** | |")
    extra = ", ".join(f"{LIP_LABELS[k]} ({k}) {p} px in {n} images" for k, (p, n) in sorted(tally.outside.items()))
    rows += [
        "\nPooled = sum of intersections / sum of unions over all images. Upper-clothes = 5 upper_clothes"
        " + 6 dress + 7 coat, in GT and prediction alike.",
        f"No person detected: {tally.no_person} of {len(per_image)} images (scored as all-background predictions).",
        f"GT ids in no group: {extra or 'none'}.\n",
        '| agnostic check (category "upper", pooled) | GT pixels | inside agnostic | target | |',
        "| --- | ---: | ---: | ---: | --- |",
    ]
    share = tally.agnostic[0] / np.maximum(tally.agnostic[1], 1)
    checks = (("coverage: upper-clothes 5+6+7", share[0] >= 0.98, "≥ 98%"),
              ("leak: face 13 + hair 2", share[1] <= 0.05, "≤ 5%"))  # fmt: skip
    for k, (label, ok, target) in enumerate(checks):
        verdict = "pass" if ok else "FAIL"
        rows.append(f"| {label} | {tally.agnostic[1, k]} | {100 * share[k]:.2f}% | {target} | {verdict} |")
    return "\n".join(rows)


def photo_table(scores: dict[str, np.ndarray]) -> str:
    rows = ["| group | " + " | ".join(scores) + " |", "| --- |" + " ---: |" * len(scores)]
    for k, name in enumerate(GROUPS):
        rows.append(f"| {name} | " + " | ".join(fmt(v[k]) for v in scores.values()) + " |")
    means = " | ".join(f"**{fmt(np.nanmean(v))}**" for v in scores.values())
    rows.append(f"| **mean of groups present** | {means} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "viton", help="the viton/ folder")
    parser.add_argument("--photos", type=Path, default=DATA / "photos", help="the photos/ folder")
    parser.add_argument("--limit", type=int, default=1000, help="number of VITON images (spread over sorted ids)")
    parser.add_argument("--method", choices=("ours", "gt", "baseline"), default="ours")
    parser.add_argument("--overlays", type=Path, default=Path(__file__).parent / "overlays" / "parse")
    parser.add_argument("--time", action="store_true", help="report parse time per image (pose excluded)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    if not (args.data / "train_pairs.txt").is_file():
        sys.exit(f"VITON data not found at {args.data} (expected train_pairs.txt there); pass --data")

    start = time.perf_counter()
    settings = get_settings().model_copy(update={"torch_threads": args.threads})
    predict = predictor(args.method, embedded_backend(settings))
    overlays = args.overlays if str(args.overlays) not in ("", ".") else None  # --overlays '': none
    ids, step = select_ids(args.data, args.limit)
    shown, viton, photos = set(ids[:: max(1, len(ids) // 6)][:6]), Tally(), Tally()
    for image_id in ids:
        image = read_image_file(args.data / "train" / "image" / f"{image_id}_0.jpg")
        gt = read_labels(args.data / "train" / "image-parse" / f"{image_id}_0.png")
        pred = viton.add(gt, in_convention(predict(image, gt), "viton"))
        if overlays and image_id in shown:
            save_overlay(overlays / f"{args.method}_viton_{image_id}.png", image, gt, pred, None)
    print(f"## VITON {args.data}, method {args.method}: {len(ids)} images, ids sorted, every {step}-th\n")
    print(viton_tables(viton))

    scores = {}
    for stem in PHOTOS:
        image = read_image_file(args.photos / "person" / f"{stem}.jpg")
        mapping = DRESSCODE_TO_LIP if stem.startswith("dresscode") else None
        gt = read_labels(args.photos / "annotations" / "parse" / f"{stem}_parse.png", mapping)
        pred = photos.add(gt, in_convention(predict(image, gt), stem.split("_")[0]))
        scores[stem] = photos.per_image[-1]
        if overlays:
            save_overlay(overlays / f"{args.method}_photo_{stem}.png", image, gt, pred, 512)
    print(f"\n## Annotated photos {args.photos}, method {args.method} (DressCode ids mapped to LIP)\n")
    print(photo_table(scores))
    if photos.no_person:
        print(f"\nNo person detected in {photos.no_person} photo(s): scored as all background.")

    if args.time:
        for label, values in (("VITON 192x256", viton.seconds), ("photos 768x1024", photos.seconds)):
            ms, n = 1000 * np.array(values or [np.nan]), len(values)
            median, p90 = np.median(ms), np.percentile(ms, 90)
            print(f"\nParse time per image, {label} (pose excluded, n={n}): median {median:.1f} ms, p90 {p90:.1f} ms")
    if overlays:
        print(f"\nOverlays (image | GT | {args.method}) in {overlays}")
    print(f"\nTotal run time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
