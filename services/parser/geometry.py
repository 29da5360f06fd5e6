"""Body geometry for the parser: a frame attached to the torso, and capsules along the limbs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.contracts import LANDMARK_INDEX


def landmark(points: np.ndarray, name: str) -> np.ndarray:
    return points[LANDMARK_INDEX[name]]


@dataclass(frozen=True)
class BodyFrame:
    """Pixel coordinates relative to the torso: t runs from the shoulder line (0) to the hip
    line (1) along the body axis; `across` is the signed sideways distance in torso lengths."""

    origin: np.ndarray
    axis: np.ndarray
    normal: np.ndarray
    length: float
    shoulder_width: float

    @classmethod
    def from_points(cls, pts: np.ndarray) -> BodyFrame:
        shoulders = (landmark(pts, "left_shoulder") + landmark(pts, "right_shoulder")) / 2
        hips = (landmark(pts, "left_hip") + landmark(pts, "right_hip")) / 2
        length = max(float(np.linalg.norm(hips - shoulders)), 1.0)
        axis = (hips - shoulders) / length
        width = float(np.linalg.norm(landmark(pts, "left_shoulder") - landmark(pts, "right_shoulder")))
        return cls(shoulders, axis, np.array([-axis[1], axis[0]]), length, max(width, 1.0))

    def coords(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = xs - self.origin[0], ys - self.origin[1]
        t = (dx * self.axis[0] + dy * self.axis[1]) / self.length
        across = (dx * self.normal[0] + dy * self.normal[1]) / self.length
        return t, across


def segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the segment a-b."""
    ab = b - a
    denom = max(float(ab @ ab), 1e-9)
    u = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / denom, 0.0, 1.0)
    return np.hypot(xs - (a[0] + u * ab[0]), ys - (a[1] + u * ab[1]))


def limb_distance(xs: np.ndarray, ys: np.ndarray, pts: np.ndarray, side: str, scale: np.ndarray) -> np.ndarray:
    """Distance to one arm's bones (upper arm, forearm, hand), each bone's distance divided by
    its radius, so that < 1 means inside that arm's capsule."""
    shoulder, elbow, wrist = (landmark(pts, f"{side}_{j}") for j in ("shoulder", "elbow", "wrist"))
    hand = np.mean([landmark(pts, f"{side}_{j}") for j in ("pinky", "index", "thumb")], axis=0)
    bones = ((shoulder, elbow, scale[0]), (elbow, wrist, scale[1]), (wrist, hand + (hand - wrist) * 0.6, scale[2]))
    return np.min([segment_distance(xs, ys, a, b) / r for a, b, r in bones], axis=0)


def body_side(body: BodyFrame, pts: np.ndarray) -> float:
    """+1 if the person's left lies on the positive `across` side of the body frame."""
    left = landmark(pts, "left_hip")
    return float((left - body.origin) @ body.normal)
