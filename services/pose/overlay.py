"""A picture of a pose for people to look at: skeleton and person mask over the photo."""

from __future__ import annotations

import cv2
import numpy as np

from services.common.contracts import LANDMARK_INDEX, PoseResult

_BONES = [
    ("left_shoulder", "right_shoulder"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
    ("left_ankle", "left_heel"),
    ("left_heel", "left_foot_index"),
    ("right_ankle", "right_heel"),
    ("right_heel", "right_foot_index"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
]
LEFT, RIGHT, CENTRE = (255, 140, 0), (0, 160, 255), (60, 220, 60)  # RGB


def draw_pose(image: np.ndarray, pose: PoseResult, min_visibility: float = 0.5) -> np.ndarray:
    """RGB uint8 copy of `image` with the mask tinted and the skeleton drawn."""
    out = image.copy()
    tint = np.array([255, 0, 255], dtype=np.float32)
    alpha = (pose.mask[..., None] * 0.25).astype(np.float32)
    out = (out * (1 - alpha) + tint * alpha).astype(np.uint8)
    lm = pose.landmark_array()
    thickness = max(2, round(max(image.shape[:2]) / 300))
    for a, b in _BONES:
        i, j = LANDMARK_INDEX[a], LANDMARK_INDEX[b]
        if min(lm[i, 3], lm[j, 3]) < min_visibility:
            continue
        colour = (
            LEFT
            if a.startswith("left") and b.startswith("left")
            else (RIGHT if a.startswith("right") and b.startswith("right") else CENTRE)
        )
        cv2.line(out, tuple(map(round, lm[i, :2])), tuple(map(round, lm[j, :2])), colour, thickness, cv2.LINE_AA)
    for x, y, _z, v, _p in lm:
        if v >= min_visibility:
            cv2.circle(out, (round(x), round(y)), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    x0, y0, x1, y1 = (round(v) for v in (pose.box.x0, pose.box.y0, pose.box.x1, pose.box.y1))
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), CENTRE, max(1, thickness // 2))
    return out
