"""Body geometry for the parser: a frame attached to the torso, and capsules along the limbs."""

from __future__ import annotations

import itertools
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


def _project(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's position along the segment a-b (0 at a, 1 at b, unclamped) and its
    distance to the segment."""
    ab = b - a
    along = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9)
    u = np.clip(along, 0.0, 1.0)
    return along, np.hypot(xs - (a[0] + u * ab[0]), ys - (a[1] + u * ab[1]))


def segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the segment a-b."""
    return _project(xs, ys, a, b)[1]


def chain_coords(xs: np.ndarray, ys: np.ndarray, chain: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's distance to the polyline `chain` and the arc length (from the chain's
    start) of the polyline point nearest to it; pixels behind the chain's start get the
    (negative) arc length of their projection onto its first segment."""
    distance, arc = np.full(np.shape(xs), np.inf), np.zeros(np.shape(xs))
    start = 0.0
    for a, b in itertools.pairwise(chain):
        length = float(np.linalg.norm(b - a))
        along, d = _project(xs, ys, a, b)
        if start > 0.0:  # only the first segment reaches back behind the chain's start
            along = np.clip(along, 0.0, 1.0)
        nearer = d < distance
        distance[nearer] = d[nearer]
        arc[nearer] = start + np.minimum(along[nearer], 1.0) * length
        start += length
    return distance, arc


def limb_distance(xs: np.ndarray, ys: np.ndarray, chain: list[np.ndarray], radii: list[float]) -> np.ndarray:
    """Distance to a limb's bones (consecutive points of `chain`), each divided by that bone's
    radius, so that < 1 means inside the limb's capsule."""
    bones = zip(chain[:-1], chain[1:], radii, strict=True)
    return np.min([segment_distance(xs, ys, a, b) / max(r, 1e-6) for a, b, r in bones], axis=0)


ARM_RADIUS = 0.16  # an arm's half-width, of the shoulder width (the learned warp's arm capsules)
# A bare arm's half-width at the shoulder, the elbow and the wrist, of the shoulder width: a
# forearm is narrower than an upper arm (at ARM_RADIUS all the way down, the skin painted where
# an old long sleeve was came out as wide planks, wider than the arms at the wrists).
ARM_TAPER = (0.16, 0.12, 0.09)
ARM_SEEN = 0.5  # the pose's visibility of an elbow and a wrist that are in the photo, not behind the body


def arm_seen(visibility: np.ndarray, side: str) -> bool:
    """Whether the pose sees that arm's elbow and wrist (ARM_SEEN): in front, not behind the body."""
    return min(float(visibility[LANDMARK_INDEX[f"{side}_{joint}"]]) for joint in ("elbow", "wrist")) >= ARM_SEEN


def torso_corners(pts: np.ndarray) -> np.ndarray:
    """(4, 2): the shoulder and hip joints, around the torso (a polygon's order)."""
    return np.array([landmark(pts, n) for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")])


def arm_chain(pts: np.ndarray, side: str) -> list[np.ndarray]:
    """Shoulder, elbow, wrist and a point past the fingers."""
    shoulder, elbow, wrist = (landmark(pts, f"{side}_{j}") for j in ("shoulder", "elbow", "wrist"))
    hand = np.mean([landmark(pts, f"{side}_{j}") for j in ("pinky", "index", "thumb")], axis=0)
    return [shoulder, elbow, wrist, hand + (hand - wrist) * 0.6]


def leg_chain(pts: np.ndarray, side: str) -> list[np.ndarray]:
    """Hip, knee, ankle and toe."""
    return [landmark(pts, f"{side}_{j}") for j in ("hip", "knee", "ankle", "foot_index")]
