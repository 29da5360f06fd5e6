"""Garment analysis: mask, category and contour landmarks of a product image.

The landmarks are points of the garment's outline, found from its shape alone (the garment
is photographed front-on and upright). The outline is simplified to a polygon; its convex
hull's deepest dents hold the armpits (between sleeve and torso: the dent's highest deep
corner), the neckline (between the collar points) and, on trousers, the crotch. Hull corners
next to those dents are cuff and hem corners. A top whose only side dents are low slits
between its cuffs and its body has its long sleeves laid down against it (no armpit shows).
"left" and "right" are the wearer's, as in the pose: the wearer's right is on the image's left.

Landmarks, in the order they are met along the outline (counter-clockwise on screen, from
the neckline): see UPPER_ORDER and LOWER_ORDER. Points that a garment has no part for
(sleeves of a tank top, the crotch of a skirt) are left out. One landmark is inside the
outline: "neckline_front", the front collar's centre, where the inside back shows through the
neck opening above it (the outline's "neckline" is then the back collar).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from services.common.contracts import Category, GarmentAnalysis
from services.common.errors import CategoryUncertain, GarmentNotDetected
from services.warp.segment import garment_mask, is_cutout

UPPER_ORDER = (
    "neckline",
    "collar_right",
    "shoulder_right",
    "sleeve_right_outer",
    "sleeve_right_inner",
    "armpit_right",
    "hem_right",
    "hem_left",
    "armpit_left",
    "sleeve_left_inner",
    "sleeve_left_outer",
    "shoulder_left",
    "collar_left",
)
LOWER_ORDER = (
    "waist_right",
    "hem_right_outer",
    "hem_right_inner",
    "crotch",
    "hem_left_inner",
    "hem_left_outer",
    "waist_left",
)
POLYGON_TOLERANCE = 0.005  # of the garment's width
MIN_ARMPIT_DEPTH = 0.03  # of the width: shallower side dents are seams, not armpits
# A side dent's deepest point is often not its armpit: on a tee whose sides slant out, the dent
# under the sleeve runs on down the side and is deepest there. The armpit is the dent's highest
# corner at least ARMPIT_SHARE as deep as its deepest point.
ARMPIT_SHARE = 0.6
# An armpit found lower than this (of the height) is the top of the slit between a long sleeve
# laid down against the body and the body, near the cuff: the sleeve's real armpit is hidden, and
# the top is read as one with its sleeves laid down (services/warp/stage.py `laid_sleeve`).
MAX_ARMPIT_LEVEL = 0.6
MIN_CROTCH_DEPTH = 0.2  # of the height
# Category detection (calibrated on 2,838 VITON tops, every 5th, and drawn lower garments and
# dresses: tests/warp/test_garment.py): each threshold with the scale its evidence is measured in.
WAISTBAND_ROWS = 0.03  # of the height: the top edge's band
BELOW_THE_TOP = (0.10, 0.15)  # of the height: the band it is compared with (a top's shoulders)
WAISTBAND = (0.75, 0.1)  # top band / the band below: VITON tops median 0.26, 99th percentile 0.73
CROTCH = (0.2, 0.1)  # the crotch dent's depth, of the height
CROTCH_WAISTBAND_ALLOWANCE = 1.5  # with a crotch, a waistband down to 0.6 of the band below
LEG_GAP = (0.35, 0.1)  # of the width, between the legs at HEM_LEVEL: drawn trousers 0.13, shorts 0.05;
# an off-shoulder top's two sleeves hanging beside a shorter body (VITON) 0.5-0.75
HEM_LEVEL = 0.95  # of the height
DRESS_LENGTH = (2.1, 0.2)  # height / width: VITON tops 99.9th percentile 2.1
FLARED_DRESS_LENGTH = (1.6, 0.2)  # height / width of a dress that flares (VITON tops: 95th percentile 1.72)
FLARE = (1.6, 0.2)  # hem / waist widths on the centre line (VITON tops: median 1.15, 95th percentile 1.33)
WAIST_LEVELS = (0.3, 0.6)  # of the height: where the waist is looked for
# A photo's garment that runs off the image's top edge over this share of its width is cut by the
# frame: its straight top edge is the frame's, not a waistband's or a neckline's, so its outline
# cannot tell the category. All 17 such VITON "cloths" are crops of a person wearing the top
# (7 of them were taken for trousers or dresses); no flat-lay among the 14,221 comes near. A
# cut-out trimmed to its garment touches the edge with its own waistband: not a frame.
FRAME_CUT = 0.2
CONFIDENCE_SLOPE = 4.0  # confidence = logistic(slope * margin): 0.8 at a margin of 0.35
MIN_CATEGORY_CONFIDENCE = 0.8  # below it `auto` refuses (category_uncertain) rather than guess
# The front neckline, when the inside back shows through the neck opening (the flat-lay's
# top-centre is then the back collar): a colour step down the centre line, this deep (of the
# garment's height) and this strong (Lab units); only where the top-centre lies within
# BACK_CLOSES of the height below the collar points.
FRONT_DEPTH = (0.02, 0.2)
FRONT_EDGE = 25.0
BACK_CLOSES = 0.06


Dent = tuple[int, int, int, float]  # a convexity defect: start, end and deepest polygon index, depth


class Outline:
    """The garment's outer contour as a simplified polygon, oriented counter-clockwise on
    screen and starting at the top-centre, with its convex hull's dents."""

    def __init__(self, mask: np.ndarray) -> None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not contours:
            raise GarmentNotDetected("no garment outline found")
        contour = max(contours, key=cv2.contourArea)
        self.dense = contour[:, 0, :].astype(np.float64)  # every outline pixel
        self.mask = mask.astype(bool)
        x, y, w, h = cv2.boundingRect(contour)
        self.x0, self.y0, self.width, self.height = x, y, w, h
        poly = cv2.approxPolyDP(contour, max(1.0, POLYGON_TOLERANCE * w), closed=True)[:, 0, :].astype(np.float64)
        if len(poly) < 4:
            raise GarmentNotDetected("the garment outline is too simple to be a garment")
        # Shoelace area < 0 with y pointing down is counter-clockwise on screen.
        area = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
        if area > 0:
            poly = poly[::-1]
        self.cx = float(np.nonzero(mask)[1].mean())
        # Start at the top point nearest the centre line: the neckline on a top, the waist on trousers.
        top = np.argmin(poly[:, 1] + 2.0 * np.abs(poly[:, 0] - self.cx))
        self.points = np.roll(poly, -top, axis=0)
        self.dents = self._dents()

    def _dents(self) -> list[Dent]:
        """Convexity defects as (start, end, far, depth) polygon indices, start < end."""
        hull = np.sort(cv2.convexHull(self.points.astype(np.int32), returnPoints=False).ravel())
        if len(hull) < 3:
            return []
        try:
            defects = cv2.convexityDefects(self.points.astype(np.int32), hull.reshape(-1, 1).astype(np.int32))
        except cv2.error:  # a self-touching outline; no dents is the safe answer
            return []
        if defects is None:
            return []
        return [(int(s), int(e), int(f), d / 256.0) for s, e, f, d in defects[:, 0]]

    def point(self, index: int) -> np.ndarray:
        return self.points[index % len(self.points)]

    def side(self, index: int) -> float:
        """Signed offset from the centre line, in widths: < 0 is the image's left (wearer's right)."""
        return (self.point(index)[0] - self.cx) / self.width

    def level(self, index: int) -> float:
        """Height below the top, in heights."""
        return (self.point(index)[1] - self.y0) / self.height


def _deepest(outline: Outline, accept: Callable[[Dent], bool]) -> Dent | None:
    candidates = [d for d in outline.dents if accept(d)]
    return max(candidates, key=lambda d: d[3]) if candidates else None


def _crotch(outline: Outline) -> Dent | None:
    def accept(d: Dent) -> bool:
        # Between two legs the gap opens downwards: its hull edge (hem to hem) lies below its
        # deepest point. A camisole's neck, between the straps, opens upwards.
        opens_down = outline.point(d[2])[1] < min(outline.point(d[0])[1], outline.point(d[1])[1])
        central = abs(outline.side(d[2])) < 0.2 and outline.level(d[2]) > 0.2
        return opens_down and central and d[3] > MIN_CROTCH_DEPTH * outline.height

    return _deepest(outline, accept)


def _armpits(outline: Outline) -> dict[str, Dent]:
    found = {}
    for name, sign in (("right", -1), ("left", 1)):

        def accept(d: Dent, sign: int = sign) -> bool:
            s = outline.side(d[2]) * sign
            # The outline starts at the neckline: a dent deepest there is the neck opening
            # (beside a strap the segmentation lost), not an armpit.
            neck = d[2] == 0
            return not neck and s > 0.12 and 0.1 < outline.level(d[2]) < 0.8 and d[3] > MIN_ARMPIT_DEPTH * outline.width

        dent = _deepest(outline, accept)
        if dent is not None:
            found[name] = dent
    return found


def _off_line(outline: Outline, span: np.ndarray, a: int, b: int) -> np.ndarray:
    """How far (pixels) each polygon point of `span` lies from the line through points a and b."""
    start = outline.point(a)
    line = outline.point(b) - start
    normal = np.array([-line[1], line[0]]) / max(float(np.linalg.norm(line)), 1.0)
    return np.abs((outline.points[span] - start) @ normal)


def _armpit_corner(outline: Outline, dent: Dent) -> int:
    """The armpit in a side dent: its highest polygon corner at least ARMPIT_SHARE as deep as the
    dent's deepest point (measured from the hull's edge across the dent)."""
    start, end, _, _ = dent
    span = _range(len(outline.points), start, end)
    depth = _off_line(outline, span, start, end)
    deep = span[depth >= ARMPIT_SHARE * depth.max()]
    return int(deep[np.argmin(outline.points[deep, 1])])


def _landmark_armpits(outline: Outline) -> dict[str, tuple[Dent, int]]:
    """Per side, the dent of its armpit and the armpit's polygon index, for the landmarks: sides
    whose armpit lies below MAX_ARMPIT_LEVEL are left out (a long sleeve laid down beside the body)."""
    found = {}
    for name, dent in _armpits(outline).items():
        armpit = _armpit_corner(outline, dent)
        if outline.level(armpit) <= MAX_ARMPIT_LEVEL:
            found[name] = (dent, armpit)
    return found


def has_armholes(mask: np.ndarray) -> bool:
    """Whether a top's outline dents in at an armpit on either side: a sleeve's or a sleeveless
    top's armhole. Long sleeves laid down against the body leave the sides straight, or slit
    near the cuffs (MAX_ARMPIT_LEVEL)."""
    return bool(_landmark_armpits(Outline(mask)))


def _corner(outline: Outline, tip: int, far: int) -> int:
    """The polygon's sharpest corner between a hull vertex and a dent's deepest point (a cuff
    or hem corner that the hull passed over because it lies on or inside the hull's edge), or
    `tip` itself when the outline runs straight from one to the other."""
    n = len(outline.points)
    span = _range(n, tip, far) if (far - tip) % n < (tip - far) % n else _range(n, far, tip)
    distance = _off_line(outline, span, tip, far)
    best = int(np.argmax(distance))
    return int(span[best]) if distance[best] > 0.03 * outline.width else tip


def _row_width(outline: Outline, top: float, bottom: float) -> float:
    """The garment's mean width (pixels covered) over the rows from `top` to `bottom` (of its height)."""
    first = outline.y0 + int(top * outline.height)
    last = max(first + 1, outline.y0 + int(bottom * outline.height))
    return float(outline.mask[first:last].sum(axis=1).mean())


def _centre_run(outline: Outline, level: float) -> int:
    """The width of the garment's run of pixels through its centre line at `level` (of the
    height): the body alone, without sleeves held apart from it; 0 where the centre is open."""
    row = outline.mask[outline.y0 + min(int(level * outline.height), outline.height - 1)]
    centre = round(outline.cx)
    if not row[centre]:
        return 0
    gaps = np.flatnonzero(~row)
    return int(gaps[gaps > centre].min(initial=len(row)) - gaps[gaps < centre].max(initial=-1) - 1)


def _leg_gap(outline: Outline, level: float = HEM_LEVEL) -> float:
    """The widest gap (of the width) between the garment's runs of pixels at `level` (of the
    height): between trouser legs; 0 where the row is one run. Runs narrower than 2% of the
    width (a fringe, a strap's end) are not legs."""
    row = outline.mask[outline.y0 + min(int(level * outline.height), outline.height - 1)].astype(np.int8)
    edges = np.diff(np.concatenate([[0], row, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    wide = ends - starts > 0.02 * outline.width
    starts, ends = starts[wide], ends[wide]
    return float((starts[1:] - ends[:-1]).max(initial=0) / outline.width)


def category_evidence(outline: Outline) -> dict[str, float]:
    """Signed evidence, in units of each threshold's scale (> 0 for, < 0 against):
    - waistband: the top edge runs straight across the garment (a waist), rather than a collar
      or straps narrower than the shoulders just below them;
    - crotch: a dent between two legs;
    - legs_together: the legs below a crotch hang side by side, not apart like an off-shoulder
      top's two sleeves beside its shorter body (a dent between them as deep as a crotch);
    - sleeveless: no armpit;
    - long: taller than a top, for its width;
    - flared: wider at the hem than at its narrowest between chest and hips (a dress's skirt)."""
    band = _row_width(outline, 0.0, WAISTBAND_ROWS) / max(_row_width(outline, *BELOW_THE_TOP), 1.0)
    crotch = _crotch(outline)
    waist = min(_centre_run(outline, level) for level in np.linspace(*WAIST_LEVELS, 7))
    return {
        "waistband": (band - WAISTBAND[0]) / WAISTBAND[1],
        "crotch": (crotch[3] / outline.height - CROTCH[0]) / CROTCH[1] if crotch else -2.0,
        "legs_together": (LEG_GAP[0] - _leg_gap(outline)) / LEG_GAP[1],
        # One armpit is a sleeve (the other may lie against the torso); none is sleeveless.
        "sleeveless": 1.0 if not _armpits(outline) else -1.0,
        "long": (outline.height / outline.width - DRESS_LENGTH[0]) / DRESS_LENGTH[1],
        "longish": (outline.height / outline.width - FLARED_DRESS_LENGTH[0]) / FLARED_DRESS_LENGTH[1],
        "flared": (_centre_run(outline, 0.95) / waist - FLARE[0]) / FLARE[1] if waist else -2.0,
    }


def cut_by_frame(image: np.ndarray, outline: Outline) -> bool:
    """The garment of a photo (not a cut-out) runs off its top edge over FRAME_CUT of its width."""
    return not is_cutout(image) and outline.mask[0].sum() > FRAME_CUT * outline.width


def detect_category(outline: Outline, cut: bool = False) -> tuple[Category, float]:
    """(category, confidence in [0.5, 1]) from the outline's shape: a waistband with a crotch or
    without sleeves is a lower garment (trousers, shorts, a skirt); anything else is a top, or a
    dress if it is long. The confidence is a logistic of the deciding evidence's margin, and 0.5
    for a garment `cut` by the frame (`cut_by_frame`): `auto` then asks for the category."""
    evidence = category_evidence(outline)
    # Trousers widen from the waist to the hips, so beside a crotch a looser waistband will do;
    # a top's false crotch (a split hem, arms held in) comes with a collar's narrow top edge, an
    # off-shoulder top's (its sleeves beside a shorter body) with the "legs" wide apart.
    trousers = min(evidence["waistband"] + CROTCH_WAISTBAND_ALLOWANCE, evidence["crotch"], evidence["legs_together"])
    # A skirt (or shorts): a waistband, no sleeves, and no deep notch up from its hem with its
    # sides wide apart (that is an off-shoulder top's body between its sleeves, the notch having
    # swallowed its armpits).
    skirt = min(evidence["waistband"], evidence["sleeveless"], max(-evidence["crotch"], evidence["legs_together"]))
    lower = max(trousers, skirt)
    # A dress: very long for its width, or long and flared below a waist (a short A-line dress).
    dress = max(evidence["long"], min(evidence["longish"], evidence["flared"]))
    if lower > 0:
        category, margin = "lower", lower
    elif dress > 0:
        category, margin = "dress", min(-lower, dress)
    else:
        category, margin = "upper", min(-lower, -dress)
    if cut:
        margin = 0.0
    return category, float(1.0 / (1.0 + np.exp(-CONFIDENCE_SLOPE * margin)))


def detect(image: np.ndarray) -> tuple[Category, float]:
    """(category, confidence) of an RGB or RGBA product image."""
    outline = Outline(garment_mask(image)[1])
    return detect_category(outline, cut_by_frame(image, outline))


def _range(n: int, start: int, end: int) -> np.ndarray:
    """Polygon indices from start to end inclusive, walking forward."""
    return np.arange(start, start + (end - start) % n + 1) % n


def _upper_landmarks(outline: Outline) -> dict[str, np.ndarray]:
    n = len(outline.points)
    pts = outline.points
    bottom = int(np.argmax(pts[:, 1] - 0.5 * np.abs(pts[:, 0] - outline.cx)))  # the hem's middle
    marks: dict[str, np.ndarray] = {"neckline": pts[0]}
    armpits = _landmark_armpits(outline)
    # The torso's half width just above the hem: the run of garment through the centre line.
    row = outline.mask[int(pts[bottom, 1] - 0.04 * outline.height)]
    centre = round(outline.cx)
    gaps = np.nonzero(~row)[0]
    left_end = gaps[gaps < centre].max(initial=-1) + 1
    right_end = gaps[gaps > centre].min(initial=len(row)) - 1
    hem_half_width = max(centre - left_end, right_end - centre, 1)
    for name, sign in (("right", -1), ("left", 1)):
        # Walk from the neckline outwards: forward on the right side, backward on the left.
        def walk(start: int, end: int, sign: int = sign) -> np.ndarray:
            return _range(n, start, end) if sign < 0 else _range(n, end, start)[::-1]

        dent = None
        if name in armpits:
            dent, armpit = armpits[name]
            tip = dent[0] if sign < 0 else dent[1]  # the dent's end on the sleeve side
            cuff_inner = _corner(outline, tip, armpit)
            hem_start = dent[1] if sign < 0 else dent[0]
        else:  # no dent: the outline's side at a third of the height
            side = walk(0, bottom)
            armpit = int(side[np.argmin(np.abs(pts[side, 1] - (outline.y0 + 0.35 * outline.height)))])
            cuff_inner, hem_start = armpit, armpit
        upper = walk(0, armpit)[1:]  # the collar point is on this side, never the neckline itself
        if not len(upper):  # the armpit found is the neckline itself: no shoulder to speak of
            raise GarmentNotDetected("no shoulder line found on the garment's outline: is this a top?")
        offset = np.abs(pts[upper, 0] - outline.cx)
        near_centre = upper[(offset < 0.3 * outline.width) & (offset > 0.03 * outline.width)]
        collar = int(near_centre[np.argmin(pts[near_centre, 1])]) if len(near_centre) else int(upper[0])
        armpit_pt = pts[armpit]
        cuff = pts[cuff_inner]
        has_sleeve = (
            dent is not None
            and (cuff[1] - pts[collar][1]) > 0.15 * outline.height
            and (cuff[1] > armpit_pt[1] or sign * (cuff[0] - armpit_pt[0]) > 0.05 * outline.width)
        )
        top_edge = walk(collar, cuff_inner)
        if has_sleeve:
            # The outer cuff corner is the sleeve's end furthest from the collar, lying across
            # the cuff from the inner corner. (Furthest out from the torso's side, as it was
            # found before, is the shoulder itself for a long sleeve laid down beside the body.)
            before = top_edge[:-1]
            far = np.linalg.norm(pts[before] - pts[collar], axis=1)
            across = np.linalg.norm(pts[before] - cuff, axis=1)
            outer = int(before[np.argmax(far + 0.2 * across)])
            marks[f"sleeve_{name}_outer"] = pts[outer]
            marks[f"sleeve_{name}_inner"] = cuff
            shoulder_range = walk(collar, outer)
        else:
            shoulder_range = walk(collar, armpit)
        if has_sleeve:  # the shoulder seam ends a little outside the armpit's line
            target_x = outline.cx + 1.08 * (armpit_pt[0] - outline.cx)
            shoulder = int(shoulder_range[np.argmin(np.abs(pts[shoulder_range, 0] - target_x))])
        else:  # a strap or a sleeveless shoulder: the top edge's outermost point
            lift = np.abs(pts[shoulder_range, 0] - outline.cx) - 0.5 * (pts[shoulder_range, 1] - pts[collar][1])
            shoulder = int(shoulder_range[np.argmax(lift)])
        lower = _range(n, hem_start, bottom) if sign < 0 else _range(n, bottom, hem_start)
        # Not a cuff: long sleeves often hang down to the hem, beside it.
        within = lower[np.abs(pts[lower, 0] - outline.cx) <= 1.1 * hem_half_width]
        lower = within if len(within) else lower
        hem = int(lower[np.argmax(pts[lower, 1] + 0.3 * np.abs(pts[lower, 0] - outline.cx))])
        marks[f"collar_{name}"] = pts[collar]
        marks[f"shoulder_{name}"] = pts[shoulder]
        marks[f"armpit_{name}"] = armpit_pt
        marks[f"hem_{name}"] = pts[hem]
    if len(armpits) == 1:
        # Garments are symmetric: a side whose armpit is hidden (a sleeve lying against the
        # torso) takes the mirror image of the other side, put back on the outline.
        found = next(iter(armpits))
        missing = "left" if found == "right" else "right"
        contour = outline.dense
        for key in [k for k in marks if found in k]:
            mirrored = np.array([2 * outline.cx - marks[key][0], marks[key][1]])
            marks.pop(key.replace(found, missing), None)
            snap = contour[np.argmin(np.linalg.norm(contour - mirrored, axis=1))]
            marks[key.replace(found, missing)] = snap if "armpit" not in key else mirrored
    return marks


def _lower_landmarks(outline: Outline) -> dict[str, np.ndarray]:
    pts = outline.points
    n = len(pts)
    marks: dict[str, np.ndarray] = {}
    top_band = outline.y0 + 0.08 * outline.height
    for name, sign in (("right", -1), ("left", 1)):
        side = np.nonzero((pts[:, 1] <= top_band) & (np.sign(pts[:, 0] - outline.cx) == sign))[0]
        if len(side) == 0:
            side = np.nonzero(np.sign(pts[:, 0] - outline.cx) == sign)[0]
        corner = np.abs(pts[side, 0] - outline.cx) - 2.0 * (pts[side, 1] - outline.y0)  # top and outermost
        marks[f"waist_{name}"] = pts[side[np.argmax(corner)]]
    crotch = _crotch(outline)
    if crotch is None:  # a skirt: the hem corners are the lowest outermost points
        for name, sign in (("right", -1), ("left", 1)):
            side = np.nonzero(np.sign(pts[:, 0] - outline.cx) == sign)[0]
            marks[f"hem_{name}_outer"] = pts[side[np.argmax(pts[side, 1] + 0.3 * np.abs(pts[side, 0] - outline.cx))]]
        return marks
    start, end, far, _ = crotch
    marks["crotch"] = pts[far]
    for name, tip, span in (("right", start, _range(n, 0, start)), ("left", end, _range(n, end, n - 1))):
        inner = _corner(outline, tip, far)
        marks[f"hem_{name}_inner"] = pts[inner]
        if inner != tip:  # the hull passed over the inner corner: its vertex is the outer corner
            marks[f"hem_{name}_outer"] = pts[tip]
            continue
        legs = span[pts[span, 1] > pts[far, 1]]
        legs = legs if len(legs) else span
        reach = np.linalg.norm(pts[legs] - pts[inner], axis=1) + pts[legs, 1]
        marks[f"hem_{name}_outer"] = pts[legs[np.argmax(reach)]]
    return marks


def front_neckline(rgb: np.ndarray, mask: np.ndarray, top: np.ndarray, height: float) -> np.ndarray | None:
    """Where the front collar starts below `top` (the outline's top-centre, the back collar when
    the inside back shows through the neck opening): the strongest colour step down the centre
    line within FRONT_DEPTH of the garment's `height`, if it is at least FRONT_EDGE Lab units
    and the strip above it is all garment. None when there is no such step."""
    x, y0 = round(float(top[0])), round(float(top[1]))
    y1 = min(mask.shape[0], y0 + round(FRONT_DEPTH[1] * height))
    half = max(1, round(0.01 * mask.shape[1]))
    if y1 - y0 < 8 or not 0 <= x - half < x + half < mask.shape[1]:
        return None
    strip = np.ascontiguousarray(rgb[y0:y1, x - half : x + half + 1])
    lab = cv2.cvtColor(strip.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).mean(axis=1)  # (rows, 3)
    step = max(1, round(0.01 * height))
    jump = np.linalg.norm(lab[2 * step :] - lab[: -2 * step], axis=1)  # across 2 steps, centred
    first = max(0, round(FRONT_DEPTH[0] * height) - step)
    if len(jump) <= first:
        return None
    row = first + int(np.argmax(jump[first:]))
    if jump[row] < FRONT_EDGE:
        return None
    # The edge itself: the largest row-to-row change within the step found.
    y = y0 + row + 1 + int(np.argmax(np.linalg.norm(np.diff(lab[row : row + 2 * step + 1], axis=0), axis=1)))
    if not mask[y0:y, x].all():
        return None
    return np.array([float(x), float(y)])


def analyse_garment(image: np.ndarray, category: Category | None = None) -> GarmentAnalysis:
    """Mask, category (detected when None) and landmarks of an RGB or RGBA product image."""
    mask, small = garment_mask(image)
    outline = Outline(small)
    confidence = 1.0
    if category is None:
        category, confidence = detect_category(outline, cut_by_frame(image, outline))
        if confidence < MIN_CATEGORY_CONFIDENCE:
            raise CategoryUncertain(
                f"the garment looks most like {category} but not surely enough (confidence {confidence:.2f}): "
                "send its category (upper, lower or dress)"
            )
    marks = _lower_landmarks(outline) if category == "lower" else _upper_landmarks(outline)
    scale = np.array([image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]])
    if category != "lower":
        front = front_neckline(image[..., :3], mask, marks["neckline"] * scale, outline.height * scale[1])
        if front is not None and "collar_left" in marks and "collar_right" in marks:
            collars_y = (marks["collar_left"][1] + marks["collar_right"][1]) / 2 * scale[1]
            # Only when the back closes the opening at the top: a V-neck's top-centre is its
            # front point already, well below the collar points.
            if marks["neckline"][1] * scale[1] - collars_y < BACK_CLOSES * outline.height * scale[1]:
                marks["neckline_front"] = front / scale
    return GarmentAnalysis(
        image_width=image.shape[1],
        image_height=image.shape[0],
        category=category,
        category_confidence=round(confidence, 3),
        landmarks={name: (float(p[0] * scale[0]), float(p[1] * scale[1])) for name, p in marks.items()},
        mask=mask,
    )
