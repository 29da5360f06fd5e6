"""The agnostic mask: where a new garment of a category may repaint the person.

It covers the old garment of that category and the body it sits on (a new garment may be
longer, wider or have other sleeves), grown by a margin, and keeps out what must survive:
face, hair, hands, and the garment of the other category.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.contracts import LANDMARK_INDEX, LIP, Category, PoseResult
from services.parser.geometry import BodyFrame, torso_corners

UPPER_LABELS = (LIP["upper_clothes"], LIP["dress"], LIP["coat"], LIP["torso_skin"], LIP["left_arm"], LIP["right_arm"])
LOWER_LABELS = (LIP["pants"], LIP["skirt"], LIP["left_leg"], LIP["right_leg"])
KEEP_ALWAYS = (LIP["face"], LIP["hair"], LIP["hat"], LIP["sunglasses"])
MARGIN = 0.09  # growth of the repaint region, in torso lengths
NECK_KEPT_ABOVE = 0.0  # torso-skin above this body-frame line (the shoulder line) is kept
LOWER_KEPT_BELOW = 1.3  # for "upper", the lower garment is kept below this line (hips: 1)
SLIVER = 0.015  # in torso lengths: for "lower", parts of the top thinner than this are parse noise
GARMENTS = (LIP["upper_clothes"], LIP["dress"], LIP["coat"], LIP["pants"], LIP["skirt"])
# The worn garments a new one of each category takes off (fusion repaints them); the others stay worn.
OLD_GARMENT = {
    "upper": (LIP["upper_clothes"], LIP["dress"], LIP["coat"]),
    "lower": (LIP["pants"], LIP["skirt"]),
    "dress": GARMENTS,
}


def any_of(labels: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
    """labels in ids, by table lookup (np.isin sorts, which is slow on full-size maps; OpenCV's
    lookup is twice numpy's indexing, and a try-on makes about ten of these)."""
    table = np.zeros(256, np.uint8)
    table[list(ids)] = 1
    if labels.dtype == np.uint8 and labels.ndim == 2 and labels.flags.c_contiguous:
        return cv2.LUT(labels, table).view(bool)
    return table.view(bool)[labels]


def left_worn(labels: np.ndarray, category: Category) -> np.ndarray:
    """HxW bool: the garments a new one of `category` leaves on the person (a top's trousers or skirt)."""
    return any_of(labels, tuple(g for g in GARMENTS if g not in OLD_GARMENT[category]))


def _px(points: np.ndarray, *names: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in np.round(points[LANDMARK_INDEX[n]])) for n in names]


def hands(labels: np.ndarray, pts: np.ndarray, torso: float) -> np.ndarray:
    """Arm pixels around each hand: hands in front of a garment stay in front of the new one."""
    discs = np.zeros(labels.shape, np.uint8)
    for side in ("left", "right"):
        wrist = pts[LANDMARK_INDEX[f"{side}_wrist"]]
        tips = np.mean([pts[LANDMARK_INDEX[f"{side}_{j}"]] for j in ("pinky", "index", "thumb")], axis=0)
        centre = wrist + (tips - wrist) * 0.8
        radius = max(2, round(max(np.linalg.norm(tips - wrist) * 1.3, 0.12 * torso)))
        cv2.circle(discs, tuple(int(v) for v in np.round(centre)), radius, 1, -1)
    return discs.astype(bool) & any_of(labels, (LIP["left_arm"], LIP["right_arm"]))


def agnostic_mask(labels: np.ndarray, pose: PoseResult, category: Category) -> np.ndarray:
    """HxW bool mask of the region to repaint for `category` (upper | lower | dress)."""
    pts = pose.landmark_array()[:, :2]
    frame = BodyFrame.from_points(pts)
    torso = frame.length
    height, width = labels.shape
    t = frame.coords(np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None])[0]
    body = np.zeros(labels.shape, np.uint8)
    limb = max(1, round(0.22 * torso))
    if category in ("upper", "dress"):
        cv2.fillPoly(body, [np.round(torso_corners(pts)).astype(np.int32)], 1)
        for side in ("left", "right"):
            shoulder, elbow = _px(pts, f"{side}_shoulder", f"{side}_elbow")
            cv2.line(body, shoulder, elbow, 1, limb)
    if category in ("lower", "dress"):
        # Down to the ankles and across the gap between the legs: a long skirt or dress hangs
        # there. Only the old garment is repainted (fusion), so bare calves stay the photo's
        # where the new garment does not reach.
        for side in ("left", "right"):
            hip, knee, ankle = _px(pts, f"{side}_hip", f"{side}_knee", f"{side}_ankle")
            cv2.line(body, hip, knee, 1, limb)
            cv2.line(body, knee, ankle, 1, limb)
        legs = _px(pts, "left_hip", "right_hip", "right_knee", "right_ankle", "left_ankle", "left_knee")
        cv2.fillPoly(body, [np.array(legs)], 1)
    own = {"upper": UPPER_LABELS, "lower": LOWER_LABELS, "dress": UPPER_LABELS + LOWER_LABELS}[category]
    repaint = (any_of(labels, own) | body.astype(bool)).astype(np.uint8)
    # Grow by MARGIN with a distance transform: linear time, where a large elliptic dilation
    # at full resolution costs tens of milliseconds.
    repaint = cv2.distanceTransform(1 - repaint, cv2.DIST_L2, 3) <= MARGIN * torso
    shoes = any_of(labels, (LIP["left_shoe"], LIP["right_shoe"]))
    # The neck above the shoulders stays too: collars end around the shoulder line, and hair
    # often hangs beside the neck.
    neck = (labels == LIP["torso_skin"]) & (t < NECK_KEPT_ABOVE)
    keep = any_of(labels, KEEP_ALWAYS) | hands(labels, pts, torso) | shoes | neck
    if category == "upper":
        # The lower garment stays below the hips; above them it is more likely the old top.
        keep |= any_of(labels, (LIP["pants"], LIP["skirt"], LIP["left_leg"], LIP["right_leg"])) & (t > LOWER_KEPT_BELOW)
    elif category == "lower":
        # The top stays, less the slivers a pixel or two thick that the parser leaves between
        # classes (along an old skirt's hem, one row of upper_clothes): kept, they cut a line
        # through the new garment.
        sliver = max(3, round(SLIVER * torso)) | 1
        top = any_of(labels, (LIP["upper_clothes"], LIP["coat"])).astype(np.uint8)
        top = cv2.morphologyEx(top, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (sliver, sliver)))
        keep |= top.astype(bool) | any_of(labels, (LIP["left_arm"], LIP["right_arm"]))
    return repaint & ~keep
