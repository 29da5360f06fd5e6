"""The warp stage: garment image + analysis + the person's pose and parse -> the garment on the
person's canvas (RGBA at the person photo's resolution).

Cloth-agnostic, as CP-VTON's geometric matching is: the body targets come from the pose and
the body silhouette (the parse's non-background, with the arms taken out along the arm bones),
never from the outline of the garment the person wears now.

1. Scale: the garment's shoulder span maps onto the person's, which fixes how far down the
   body the garment's armpits and hem fall.
2. Torso: garment landmarks (neckline, collar, shoulders, armpits, side points, hem) map to
   body points (neck base, shoulders, the torso's sides at the matching heights, hips), with
   the garment's centre line on the body's axis. A thin-plate spline with a bending-energy
   regulariser takes the canvas to the garment through those pairs.
3. Sleeves go with the torso for now; whatever stands off the body (a flat-lay sleeve held
   out sideways, spline overshoot) is trimmed to the body silhouette. Sleeves laid along
   each arm as parts of their own were tried and folded on VITON's flat-lays (0.47 mean
   IoU against 0.59 without, 60 pairs; see git history, commit edd32cd), and so did cuff
   corners placed on the arms inside the one spline (on 100 pairs it covers 0.786 of the
   true region against 0.819 without): the sleeve landmarks are too often missing or off on
   flat-lays. The model keeps room for three parts. Trousers are one part whose hems follow the knees and ankles.
4. The garment_warp model evaluates the splines densely and samples the garment.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.contracts import LIP, GarmentAnalysis, ParseResult, PoseResult, WarpResult
from services.common.inference import Infer
from services.parser.geometry import BodyFrame, arm_chain, landmark, leg_chain, limb_distance
from services.warp import tps
from services.warp.model import NAME as MODEL_NAME
from services.warp.model import PARTS

REGULARISATION = 2e-3  # bending-energy weight (canvas units)
# Flat-lay garments are wider than the body they wrap around seen from the front: their
# widths and lengths are scaled down by this much against the shoulder span (fitted on VITON).
LENGTH_SCALE = 0.8
SILHOUETTE_MARGIN = 0.08  # torso lengths: how far the garment may stand off the body
SHOULDER_OUT = 0.1  # the shoulder seam sits this far (shoulder widths) outside the joint
SHOULDER_UP = 0.03  # and this far (torso lengths) above it
COLLAR_ACROSS, COLLAR_UP = 0.2, 0.08
NECK_UP = 0.02
ARMPIT_T = (0.12, 0.45)  # where armpits may fall, as body-frame t
HEM_T = {"upper": (0.45, 1.6), "dress": (1.0, 3.5)}
# Where a top's hem falls on the body is barely predicted by its flat-lay proportions (on 200
# VITON pairs the correlation is under 0.1: tucking, fit and the hip joint's placement
# dominate), so a top's hem is drawn towards the usual place, just below the hip joints, and
# the garment's own length only moves it part of the way (a crop top still ends high).
TOP_HEM_PRIOR, TOP_HEM_WEIGHT = 1.05, 0.3
SIDE_FRACTIONS = (0.25, 0.5, 0.75)  # torso side points between armpit and hem
HIPS_T = 1.1  # below this body-frame t the torso's sides are no longer seen
UPPER_ARM_RADIUS = 0.17  # of the shoulder width: the arm's half-width, for the silhouette
GARMENT_MAX_SIDE = 1024  # the garment is sampled from at most this resolution
EDGE_TRIM = 0.002  # of the garment image's longer side, taken off the mask's edge


@dataclass(frozen=True)
class Part:
    """One piece of the garment and its spline: `garment` points (garment pixels) go to
    `canvas` points (person pixels); `alpha` is the piece's share of the garment mask."""

    garment: np.ndarray
    canvas: np.ndarray
    alpha: np.ndarray


class Body:
    """Body targets on the person's canvas, from the pose and the parse's body silhouette
    (everything not background) and arms; never from the worn garment's own outline."""

    def __init__(self, pose: PoseResult, parse: ParseResult) -> None:
        self.pts = pose.landmark_array()[:, :2].astype(np.float64)
        self.frame = BodyFrame.from_points(self.pts)
        self.person = parse.labels != LIP["background"]
        self.arm_skin = (parse.labels == LIP["left_arm"]) | (parse.labels == LIP["right_arm"])
        self.height, self.width = self.person.shape
        sw = self.frame.shoulder_width
        self.arms = [arm_chain(self.pts, side) for side in ("left", "right")]
        self.arm_radii = [UPPER_ARM_RADIUS * sw, 0.15 * sw, 0.15 * sw]

    def near_silhouette(self, margin: float) -> np.ndarray:
        """Pixels within `margin` torso lengths of the body silhouette: nothing of the garment
        floats further from the body (a flat-lay sleeve held out sideways, spline overshoot)."""
        outside = cv2.distanceTransform((~self.person).astype(np.uint8), cv2.DIST_L2, 3)
        return outside <= margin * self.frame.length

    def at(self, t: float, across: float) -> np.ndarray:
        """Canvas point at body-frame t (torso lengths down from the shoulder line) and
        `across` (torso lengths, + toward the person's left as seen in the image)."""
        f = self.frame
        return f.origin + f.axis * t * f.length + f.normal * across * f.length

    def side_sign(self, side: str) -> float:
        """+1 or -1: the `across` sign of the person's `side` (left or right)."""
        shoulder = landmark(self.pts, f"{side}_shoulder")
        return float(np.sign(self.frame.coords(shoulder[:1], shoulder[1:])[1][0]) or (1 if side == "left" else -1))

    def torso_edge(self, t: float, side: str) -> np.ndarray:
        """The torso's outline at height t on `side`: walking out from the body axis, the
        first point off the silhouette or inside an arm. Below HIPS_T the silhouette is legs
        and hands, so the width found at HIPS_T is carried down."""
        sign = self.side_sign(side)
        f = self.frame
        steps = np.arange(0.0, 1.2 * f.shoulder_width, 1.0)
        line = f.origin + f.axis * min(t, HIPS_T) * f.length + f.normal * sign * steps[:, None]
        xs, ys = line[:, 0], line[:, 1]
        inside = (xs >= 0) & (xs < self.width) & (ys >= 0) & (ys < self.height)
        on_person, in_arm = np.zeros(len(line), bool), np.zeros(len(line), bool)
        on_person[inside] = self.person[ys[inside].astype(int), xs[inside].astype(int)]
        in_arm[inside] = self.arm_skin[ys[inside].astype(int), xs[inside].astype(int)]
        in_arm |= np.min([limb_distance(xs, ys, arm, self.arm_radii) for arm in self.arms], axis=0) < 1.0
        stop = ~on_person | in_arm
        stop[: max(1, int(0.25 * f.shoulder_width))] = False  # an arm across the chest is not the edge
        end = int(np.argmax(stop)) if stop.any() else len(line) - 1
        # Too close to the axis means nothing sensible was found: the body's usual proportions.
        across = steps[end] if end >= 0.3 * f.shoulder_width else 0.45 * f.shoulder_width
        return self.at(t, sign * across / f.length)

    def shoulder(self, side: str) -> np.ndarray:
        joint = landmark(self.pts, f"{side}_shoulder")
        other = landmark(self.pts, f"{'right' if side == 'left' else 'left'}_shoulder")
        out = (joint - other) / max(float(np.linalg.norm(joint - other)), 1.0)
        return (
            joint + out * SHOULDER_OUT * self.frame.shoulder_width - self.frame.axis * SHOULDER_UP * self.frame.length
        )


def _g(garment: GarmentAnalysis, name: str) -> np.ndarray:
    return np.array(garment.landmarks[name], dtype=np.float64)


def _side_walk(mask: np.ndarray, start: np.ndarray, end: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Points of the garment's outline between two outline points, at fractions of the way
    down: at each height, the mask's extreme pixel on the side the points are on."""
    points = []
    centre = mask.shape[1] / 2
    for f in fractions:
        y = round(start[1] + f * (end[1] - start[1]))
        row = np.nonzero(mask[min(max(y, 0), mask.shape[0] - 1)])[0]
        guess = start[0] + f * (end[0] - start[0])
        if len(row) == 0:
            points.append(np.array([guess, y], float))
            continue
        # The outline point nearest the straight line between the two, on that row.
        edges = row[np.r_[True, np.diff(row) > 1] | np.r_[np.diff(row) > 1, True]]
        edges = edges[(edges < centre) == (guess < centre)] if ((edges < centre) == (guess < centre)).any() else edges
        points.append(np.array([edges[np.argmin(np.abs(edges - guess))], y], float))
    return points


def upper_parts(garment: GarmentAnalysis, body: Body) -> list[Part]:
    """A top or dress as one part: torso landmarks onto the body."""
    mask = garment.mask
    f = body.frame
    sw, length = f.shoulder_width, f.length
    g_span = np.linalg.norm(_g(garment, "shoulder_left") - _g(garment, "shoulder_right"))
    p_span = np.linalg.norm(body.shoulder("left") - body.shoulder("right"))
    scale = LENGTH_SCALE * p_span / max(g_span, 1.0)  # person pixels per garment pixel
    g_shoulder_y = (_g(garment, "shoulder_left")[1] + _g(garment, "shoulder_right")[1]) / 2
    t_of = lambda y: -SHOULDER_UP + (y - g_shoulder_y) * scale / length  # noqa: E731
    hem_range = HEM_T["dress" if garment.category == "dress" else "upper"]

    g_pts: list[np.ndarray] = [_g(garment, "neckline")]
    c_pts: list[np.ndarray] = [body.at(-NECK_UP, 0.0)]
    hem_points = {}
    for side in ("left", "right"):
        sign = body.side_sign(side)
        g_armpit, g_hem = _g(garment, f"armpit_{side}"), _g(garment, f"hem_{side}")
        t_armpit = float(np.clip(t_of(g_armpit[1]), *ARMPIT_T))
        t_hem = t_of(g_hem[1])
        if garment.category == "upper":
            t_hem = TOP_HEM_PRIOR + TOP_HEM_WEIGHT * (t_hem - TOP_HEM_PRIOR)
        t_hem = float(np.clip(t_hem, *hem_range))
        c_armpit = body.torso_edge(t_armpit, side)
        if t_hem <= HIPS_T:
            c_hem = body.torso_edge(t_hem, side)
        else:  # below the hips the body says little: keep the garment's own flare
            half = abs(g_hem[0] - _g(garment, "neckline")[0]) * scale / length
            c_hem = body.at(t_hem, sign * half)
        hem_points[side] = c_hem
        g_pts += [_g(garment, f"collar_{side}"), _g(garment, f"shoulder_{side}"), g_armpit, g_hem]
        c_pts += [body.at(-COLLAR_UP, sign * COLLAR_ACROSS * sw / length), body.shoulder(side), c_armpit, c_hem]
        for frac, g_side in zip(SIDE_FRACTIONS, _side_walk(mask, g_armpit, g_hem, SIDE_FRACTIONS), strict=True):
            g_pts.append(g_side)
            c_pts.append(body.torso_edge(t_armpit + frac * (t_hem - t_armpit), side))
    # The centre line, so that prints stay straight: neckline to hem middle.
    g_hem_mid = (_g(garment, "hem_left") + _g(garment, "hem_right")) / 2
    c_hem_mid = (hem_points["left"] + hem_points["right"]) / 2
    for frac in (0.33, 0.66, 1.0):
        g_pts.append(_g(garment, "neckline") + frac * (g_hem_mid - _g(garment, "neckline")))
        c_pts.append(body.at(-NECK_UP, 0.0) + frac * (c_hem_mid - body.at(-NECK_UP, 0.0)))
    return [Part(np.array(g_pts), np.array(c_pts), mask)]


def _polyline_at(chain: list[np.ndarray], distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Point and unit direction at arc length `distance` along a polyline (extended past its end)."""
    for a, b in itertools.pairwise(chain):
        seg = float(np.linalg.norm(b - a))
        direction = (b - a) / max(seg, 1e-6)
        if distance <= seg or b is chain[-1]:
            return a + direction * distance, direction
        distance -= seg
    raise AssertionError("unreachable")


def lower_parts(garment: GarmentAnalysis, body: Body) -> list[Part]:
    """Trousers or a skirt as one part: waist on the hips, hems at the ankles (or the knees)."""
    f = body.frame
    g_waist = {s: _g(garment, f"waist_{s}") for s in ("left", "right")}
    c_waist = {s: body.torso_edge(0.95, s) for s in ("left", "right")}
    scale = np.linalg.norm(c_waist["left"] - c_waist["right"]) / max(
        np.linalg.norm(g_waist["left"] - g_waist["right"]), 1.0
    )
    g_pts, c_pts = [], []
    for side in ("left", "right"):
        g_pts.append(g_waist[side])
        c_pts.append(c_waist[side])
        _hip, knee, ankle, _ = leg_chain(body.pts, side)
        g_outer = _g(garment, f"hem_{side}_outer")
        g_inner = garment.landmarks.get(f"hem_{side}_inner")
        g_len = float(np.linalg.norm(g_outer - g_waist[side])) * scale
        chain = [c_waist[side], knee, ankle]
        c_hem, direction = _polyline_at(chain, g_len)
        normal = np.array([-direction[1], direction[0]])
        out = np.sign(normal @ (c_waist[side] - f.origin - f.axis * f.length)) or 1.0
        if g_inner is not None:
            g_inner = np.array(g_inner)
            width = float(np.linalg.norm(g_outer - g_inner)) * scale
            g_pts += [g_outer, g_inner]
            c_pts += [c_hem + normal * out * width / 2, c_hem - normal * out * width / 2]
            g_mid, c_mid = (g_waist[side] + g_outer) / 2, (c_waist[side] + c_hem + normal * out * width / 2) / 2
            g_pts.append(g_mid)
            c_pts.append(c_mid)
        else:
            g_pts.append(g_outer)
            c_pts.append(c_hem + normal * out * float(np.linalg.norm(g_outer - g_waist[side])) * scale * 0.3)
    if "crotch" in garment.landmarks:
        g_pts.append(_g(garment, "crotch"))
        c_pts.append(body.at(1.3, 0.0))
    return [Part(np.array(g_pts), np.array(c_pts), garment.mask.copy())]


def run(
    garment_image: np.ndarray, garment: GarmentAnalysis, pose: PoseResult, parse: ParseResult, infer: Infer
) -> WarpResult:
    """The garment on the person's canvas: RGBA float32 in [0, 1] at the photo's resolution."""
    body = Body(pose, parse)
    parts = lower_parts(garment, body) if garment.category == "lower" else upper_parts(garment, body)
    height, width = parse.image_height, parse.image_width
    unit = float(max(height, width))
    g_h, g_w = garment.mask.shape
    shrink = min(1.0, GARMENT_MAX_SIDE / max(g_h, g_w))
    size = (max(1, round(g_w * shrink)), max(1, round(g_h * shrink)))
    rgb = garment_image[..., :3]
    if shrink < 1:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    control = np.zeros((1, PARTS, tps.MAX_POINTS, 2), np.float32)
    weights = np.zeros((1, PARTS, tps.MAX_POINTS + 3, 2), np.float32)
    alpha = np.zeros((1, PARTS, size[1], size[0]), np.float32)
    to_unit = np.array([2.0 / (g_w - 1), 2.0 / (g_h - 1)])
    trim = round(EDGE_TRIM * max(g_h, g_w))
    for p, part in enumerate(parts[:PARTS]):
        source = part.canvas / unit
        target = part.garment * to_unit - 1.0
        control[0, p], weights[0, p] = tps.padded(source, tps.fit(source, target, REGULARISATION))
        part_alpha = part.alpha.astype(np.uint8)
        if trim:  # the mask's outermost pixels mix in the backdrop: a pale fringe on the person
            part_alpha = cv2.erode(part_alpha, np.ones((2 * trim + 1,) * 2, np.uint8))
        part_alpha = part_alpha.astype(np.float32)
        alpha[0, p] = cv2.resize(part_alpha, size, interpolation=cv2.INTER_AREA) if shrink < 1 else part_alpha
    outputs = infer(
        MODEL_NAME,
        {
            "rgb__0": (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None],
            "part_alpha__1": alpha,
            "control_points__2": control,
            "weights__3": weights,
            "canvas_size__4": np.array([[height, width]], np.int32),
        },
    )
    rgba = outputs["warped__0"][0].transpose(1, 2, 0)
    rgba[..., 3] *= body.near_silhouette(SILHOUETTE_MARGIN)
    return WarpResult(image_width=width, image_height=height, category=garment.category, rgba=rgba)
