"""PCK@0.1 of our pose stage and of MediaPipe's BlazePose against VITON's OpenPose ground truth.

Both pipelines run on the same images in one run, and both go through the same conversion to
COCO-18 (services.pose.openpose.to_openpose): MediaPipe's landmarks are wrapped in a PoseResult.
Images: the ids of viton/train_pairs.txt, sorted, every k-th with k = len(ids) // limit, so the
selection is spread evenly over the sample and the same on every run.

A GT joint counts when its confidence is > 0; it is a hit when the predicted joint is present
and within 0.1 x torso height (GT neck to the midpoint of the GT hips). A missing prediction, or
no person detected at all, is a miss. Images whose GT lacks the neck or a hip are skipped.
Note: BlazePose and OpenPose place the hips differently, so the hip rows are partly a convention gap.

    .venv/bin/python bench/pose_accuracy.py --limit 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mediapipe as mp
import numpy as np
from shared_data import VITON, select_ids

from services.common.config import get_settings
from services.common.contracts import Box, Landmark, PoseResult
from services.common.errors import NoPersonDetected
from services.common.imageio import read_image_file
from services.common.inference import LocalBackend, embedded_backend
from services.pose import stage
from services.pose.openpose import to_openpose

DEFAULT_DATA = VITON
GROUPS: dict[str, tuple[int, ...]] = {
    "shoulders": (2, 5),
    "elbows": (3, 6),
    "wrists": (4, 7),
    "hips": (8, 11),
}
GROUPS["overall"] = tuple(j for joints in GROUPS.values() for j in joints)
NECK, RHIP, LHIP = 1, 8, 11
PCK_ALPHA = 0.1


@dataclass
class Tally:
    """Hits per COCO joint, plus joints predicted missing and images with no person found."""

    hits: dict[int, int] = field(default_factory=dict)
    missing: int = 0
    no_person: int = 0

    def add(self, pred: np.ndarray | None, gt: np.ndarray, threshold: float) -> None:
        if pred is None:
            self.no_person += 1
        for j in GROUPS["overall"]:
            if gt[j, 2] <= 0 or pred is None:  # no GT joint, or already counted as no person
                continue
            if pred[j, 2] <= 0:
                self.missing += 1
                continue
            self.hits[j] = self.hits.get(j, 0) + int(np.hypot(*(pred[j, :2] - gt[j, :2])) <= threshold)


def read_gt(data: Path, image_id: str) -> np.ndarray:
    doc = json.loads((data / "train" / "pose" / f"{image_id}_0_keypoints.json").read_text())
    return np.asarray(doc["people"][0]["pose_keypoints"], dtype=np.float64).reshape(18, 3)


def mediapipe_pose(pose: mp.solutions.pose.Pose, image: np.ndarray) -> PoseResult | None:
    """MediaPipe's landmarks as a PoseResult (pixels), so that to_openpose treats both alike."""
    found = pose.process(image).pose_landmarks
    if found is None:
        return None
    height, width = image.shape[:2]
    landmarks = [
        Landmark(
            x=p.x * width,
            y=p.y * height,
            z=p.z * width,
            visibility=float(np.clip(p.visibility, 0, 1)),
            presence=float(np.clip(p.presence, 0, 1)),
        )
        for p in found.landmark
    ]
    return PoseResult(
        image_width=width,
        image_height=height,
        landmarks=landmarks,
        box=Box(x0=0, y0=0, x1=width, y1=height),
        score=1.0,
        mask=np.zeros((height, width), np.float32),
    )


def ours_pose(image: np.ndarray, backend: LocalBackend) -> PoseResult | None:
    try:
        return stage.run(image, backend)
    except NoPersonDetected:
        return None


def pck(tally: Tally, totals: dict[int, int], joints: tuple[int, ...]) -> float:
    return 100.0 * sum(tally.hits.get(j, 0) for j in joints) / max(1, sum(totals.get(j, 0) for j in joints))


def table(ours: Tally, ref: Tally, totals: dict[int, int], images: int) -> str:
    rows = [
        "| PCK@0.1 torso (%) | GT joints | ours | MediaPipe | ours − MediaPipe |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for group, joints in GROUPS.items():
        a, b = pck(ours, totals, joints), pck(ref, totals, joints)
        label = f"**{group}**" if group == "overall" else f"{group} {joints}"
        count = sum(totals.get(j, 0) for j in joints)
        rows.append(f"| {label} | {count} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    gt_joints = sum(totals.values())
    rows.append(
        f"| predicted joint missing (of GT joints) | {gt_joints} | {ours.missing} | {ref.missing} "
        f"| {ours.missing - ref.missing:+d} |"
    )
    rows.append(
        f"| no person detected (of images) | {images} | {ours.no_person} | {ref.no_person} "
        f"| {ours.no_person - ref.no_person:+d} |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the viton/ folder")
    parser.add_argument("--limit", type=int, default=1000, help="number of images (spread over sorted ids)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for our pipeline")
    args = parser.parse_args()
    if not (args.data / "train_pairs.txt").is_file():
        sys.exit(f"VITON data not found at {args.data} (expected train_pairs.txt there); pass --data")

    backend = embedded_backend(get_settings().model_copy(update={"torch_threads": args.threads}))
    ours, ref = Tally(), Tally()
    totals: dict[int, int] = {}
    skipped = evaluated = 0
    deltas: dict[str, np.ndarray] = {}  # per image id: distances of the 33 landmarks, px
    ids, step = select_ids(args.data, args.limit)
    start = time.perf_counter()
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as mp_pose:
        for image_id in ids:
            gt = read_gt(args.data, image_id)
            if min(gt[NECK, 2], gt[RHIP, 2], gt[LHIP, 2]) <= 0:
                skipped += 1
                continue
            torso = float(np.hypot(*(gt[NECK, :2] - (gt[RHIP, :2] + gt[LHIP, :2]) / 2)))
            image = read_image_file(args.data / "train" / "image" / f"{image_id}_0.jpg")
            ours_result, ref_result = ours_pose(image, backend), mediapipe_pose(mp_pose, image)
            for tally, result in ((ours, ours_result), (ref, ref_result)):
                tally.add(None if result is None else to_openpose(result, "COCO18"), gt, PCK_ALPHA * torso)
            for j in GROUPS["overall"]:
                totals[j] = totals.get(j, 0) + int(gt[j, 2] > 0)
            if ours_result is not None and ref_result is not None:
                diff = ours_result.landmark_array()[:, :2] - ref_result.landmark_array()[:, :2]
                deltas[image_id] = np.hypot(diff[:, 0], diff[:, 1])
            evaluated += 1
    elapsed = time.perf_counter() - start

    print(
        f"VITON {args.data}: {evaluated} images evaluated, {skipped} skipped (GT lacks neck or a hip); "
        f"ids sorted, every {step}-th\n"
    )
    print(table(ours, ref, totals, evaluated))
    if deltas:
        d = np.concatenate(list(deltas.values()))
        worst = max(deltas, key=lambda k: deltas[k].max())
        print(
            f"\nOurs vs MediaPipe, 33 landmarks on {len(deltas)} images where both found a person: "
            f"mean distance {d.mean():.2f} px, median {np.median(d):.2f} px, "
            f"max {d.max():.1f} px (image {worst}_0.jpg). ({elapsed:.0f} s)"
        )


if __name__ == "__main__":
    main()
