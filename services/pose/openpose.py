"""BlazePose landmarks as OpenPose keypoints (COCO-18 and BODY_25), as VITON-family code reads them."""

from __future__ import annotations

from typing import Literal

import numpy as np

from services.common.contracts import LANDMARK_INDEX, PoseResult

OpenPoseFormat = Literal["COCO18", "BODY25"]

# A joint is reported as missing (0, 0, 0), as OpenPose does, when it lies outside the image
# or BlazePose thinks it is probably occluded.
MIN_VISIBILITY = 0.3

# Joint names per format; "neck" and "mid_hip" are synthesised, None has no BlazePose source.
BODY25 = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "mid_hip",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_foot_index",
    None,
    "left_heel",
    "right_foot_index",
    None,
    "right_heel",
)
# COCO-18 is BODY_25's first 19 joints without the mid-hip, in the same order.
COCO18 = tuple(name for name in BODY25[:19] if name != "mid_hip")
_MIDPOINTS = {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip")}


def to_openpose(pose: PoseResult, fmt: OpenPoseFormat = "COCO18") -> np.ndarray:
    """(N, 3) keypoints x, y, confidence in image pixels; missing joints are zeros."""
    names = {"COCO18": COCO18, "BODY25": BODY25}[fmt]
    lm = pose.landmark_array()
    inside = (lm[:, 0] >= 0) & (lm[:, 0] < pose.image_width) & (lm[:, 1] >= 0) & (lm[:, 1] < pose.image_height)
    present = inside & (lm[:, 3] >= MIN_VISIBILITY)

    def joint(name: str | None) -> tuple[float, float, float]:
        if name is None:
            return (0.0, 0.0, 0.0)
        if name in _MIDPOINTS:
            a, b = (LANDMARK_INDEX[n] for n in _MIDPOINTS[name])
            if not (present[a] and present[b]):
                return (0.0, 0.0, 0.0)
            x, y = (lm[a, :2] + lm[b, :2]) / 2
            return (float(x), float(y), float(min(lm[a, 3], lm[b, 3])))
        i = LANDMARK_INDEX[name]
        return (float(lm[i, 0]), float(lm[i, 1]), float(lm[i, 3])) if present[i] else (0.0, 0.0, 0.0)

    return np.array([joint(n) for n in names], dtype=np.float32)
