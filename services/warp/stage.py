"""The warp stage: garment image + analysis + the person's pose and parse -> the garment on the
person's canvas (RGBA at the person photo's resolution).

Cloth-agnostic, as CP-VTON's geometric matching is: the body targets come from the pose, the
body silhouette (the parse's non-background), bare arms, face and hair, never from the outline
of the garment the person wears now.

1. Scale: the garment's shoulder span maps onto the person's, which fixes how far down the
   body the garment's armpits and hem fall.
2. Torso: garment landmarks (neckline, collar, shoulders, armpits, side points, hem) map to
   body points (neck base, shoulders, the torso's sides at the matching heights, hips), with
   the garment's centre line on the body's axis. A thin-plate spline with a bending-energy
   regulariser takes the canvas to the garment through those pairs.
3. Sleeves: each sleeve is a part of its own whose shape comes from the body and whose
   length and texture come from the garment. It covers the arm's silhouette around the
   shoulder-elbow-wrist bones, from the shoulder down to the sleeve's own length (scaled like
   the rest of the garment); its spline lays the flat-lay sleeve's axis along the arm. Shaping
   sleeves by their flat-lay outline instead (splines through the cuff and armpit points) was
   tried twice and folded on VITON's flat-lays (0.47 mean IoU against 0.59 without, see git
   history, commit edd32cd): the arm gives a sleeve's shape far more reliably than its outline
   on a product photo does. The torso lies over the sleeves: where its spline lays the
   flat-lay's own sleeves on the body the garment stays whole, and the sleeve parts show only
   where the arm reaches past them.
4. What shows: every part stays on the body's silhouette; hair and the face are in front of
   the garment, and bare arms in front of its torso (a sleeve goes round its arm). The masks
   go to the model with the splines.
5. The garment_warp model evaluates the splines densely and samples the garment.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from services import learned
from services.common.contracts import LIP, Category, GarmentAnalysis, ParseResult, PoseResult, WarpResult
from services.common.errors import ModelUnavailable
from services.common.inference import Infer
from services.parser.agnostic import any_of, hands
from services.parser.geometry import (
    ARM_TAPER,
    BodyFrame,
    arm_chain,
    arm_seen,
    chain_coords,
    landmark,
    leg_chain,
    torso_corners,
)
from services.warp import gmm, tps
from services.warp.garment import has_armholes
from services.warp.model import NAME as MODEL_NAME
from services.warp.model import PARTS

REGULARISATION = 2e-3  # bending-energy weight (canvas units)
# Flat-lay garments are wider than the body they wrap around seen from the front: their
# widths and lengths are scaled down by this much against the shoulder span (fitted on VITON).
LENGTH_SCALE = 0.8
FLARE_MARGIN = 0.08  # torso lengths: how far a dress's skirt may stand off the legs below the hips
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
LEGS = (LIP["pants"], LIP["skirt"], LIP["dress"], LIP["left_leg"], LIP["right_leg"])
WAIST_T = (0.7, 0.95)  # body-frame t: the highest and the lowest a lower garment's waistband sits
WAIST_OVERLAP = 0.05  # body-frame t: the waistband goes this far up under the top's hem
COLLAR_BOX = (-0.6, 0.4, 0.6)  # body-frame t from, t to, and half-width in shoulder widths
NECK_SKIN_T = 0.1  # bare skin above this body-frame t is the neck, in front of a garment's inside back
# Spline points along a sleeve, as fractions of its length. They reach past the cuff so that the
# spline stays regular where the arm's tube ends (the tube, not the spline, cuts the sleeve off),
# and back past the shoulder joint, where the tube's cap over the shoulder takes the sleeve's
# root (sampled along the arm's line extended, the cap took the flat-lay's chest: a white slab
# with the FILA tee's band on a shopper's shoulder).
SLEEVE_STATIONS = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.3)
SLEEVE_REACH = 0.25  # of the shoulder width: a sleeve covers the arm's silhouette this far from its bones
SLEEVE_MARGIN = 0.06  # of the flat-lay's shoulder span: what lies this far out past an armpit is sleeve
REACH_SIDE = 256  # pixels: the flat-lay's mask is scaled to this for measuring its sleeves' reach
LAID_SLEEVE = 0.12  # of the shoulder span: the cuff's width of a long sleeve laid down against the body
BARE_STRETCH = 0.3  # a stretch of the arm with this much of its capsule bare skin: the parse sees that arm
ARM_GRID = 8  # grid points across an arm's radius where its capsule is worked out
GARMENT_MAX_SIDE = 1024  # the garment is sampled from at most this resolution
EDGE_TRIM = 0.002  # of the garment image's longer side, taken off the mask's edge


@dataclass(frozen=True)
class Part:
    """One piece of the garment and its spline: `garment` points (garment pixels) go to
    `canvas` points (person pixels); `alpha` is the piece's share of the garment mask, or None
    for a piece whose shape is all in `shown` and that samples the garment's colours anywhere
    (extended past its outline); `shown` is where on the canvas the piece may show."""

    garment: np.ndarray
    canvas: np.ndarray
    alpha: np.ndarray | None
    shown: np.ndarray


class Body:
    """Body targets on the person's canvas, from the pose and the parse's body silhouette
    (everything not background) and arms; never from the worn garment's own outline."""

    def __init__(self, pose: PoseResult, parse: ParseResult) -> None:
        landmarks = pose.landmark_array()
        self.pts = landmarks[:, :2].astype(np.float64)
        self.visibility = landmarks[:, 3]
        self.frame = BodyFrame.from_points(self.pts)
        labels = parse.labels
        self.person = labels != LIP["background"]
        self.arm_skin = (labels == LIP["left_arm"]) | (labels == LIP["right_arm"])
        # What the garment may show on: the silhouette less what is in front of any garment.
        self.visible = self.person & (labels != LIP["hair"]) & (labels != LIP["face"])
        self.height, self.width = self.person.shape
        self.labels = labels

    def torso_shown(self, flare: bool) -> np.ndarray:
        """Where a garment's torso (or trousers) may show: the visible silhouette less bare arms
        and hands, which are in front of it. With `flare`, a dress's skirt may also stand off
        the legs below the hips by FLARE_MARGIN."""
        shown = self.visible & ~self.arm_skin
        if flare:
            outside = cv2.distanceTransform((~self.person).astype(np.uint8), cv2.DIST_L2, 3)
            shown |= self.below_hips & (outside <= FLARE_MARGIN * self.frame.length)
        return shown

    @functools.cached_property
    def below_hips(self) -> np.ndarray:
        """HxW bool: below HIPS_T along the body's axis (computed once per body)."""
        xs, ys = np.arange(self.width, dtype=np.float32)[None, :], np.arange(self.height, dtype=np.float32)[:, None]
        return self.frame.coords(xs, ys)[0] > HIPS_T

    def waist_t(self) -> float:
        """Body-frame t where a lower garment's waistband goes: at the hips (WAIST_T[1]), or up
        to just under the hem of the top the person keeps on (WAIST_OVERLAP), no higher than
        WAIST_T[0]: between a top tucked in or ending at the waist and the new waistband, no band
        of belly that the photo does not show."""
        top = any_of(self.labels, (LIP["upper_clothes"], LIP["coat"]))
        if top.sum() < 100:
            return WAIST_T[1]
        ys, xs = np.nonzero(top)
        hem = float(np.percentile(self.frame.coords(xs.astype(np.float64), ys.astype(np.float64))[0], 98))
        return float(np.clip(hem - WAIST_OVERLAP, *WAIST_T))

    def between_legs(self) -> np.ndarray:
        """Below the hips, each row from the leftmost to the rightmost pixel of the legs (bare or
        clothed), less bare arms and hands (in front): where a skirt hangs, across the gap
        between legs that stand apart."""
        legs = any_of(self.labels, LEGS) & self.below_hips
        between = np.logical_or.accumulate(legs, axis=1) & np.logical_or.accumulate(legs[:, ::-1], axis=1)[:, ::-1]
        return between & ~self.arm_skin

    def _box(self, corners: np.ndarray, reach: float) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1): the canvas box around `corners` grown by `reach`, or None when empty."""
        x0, y0 = np.floor(corners.min(axis=0) - reach).astype(int).clip(0)
        x1, y1 = np.ceil(corners.max(axis=0) + reach + 1).astype(int)
        x1, y1 = min(x1, self.width), min(y1, self.height)
        return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None

    @staticmethod
    def _chain_coords(chain: list[np.ndarray], box: tuple[int, int, int, int], reach: float) -> tuple[np.ndarray, ...]:
        """(xs, ys, distance, arc) over the box, as parser.geometry.chain_coords gives them, worked
        out on a grid of about ARM_GRID points across `reach` and scaled up linearly (both are
        smooth away from the joints): a full-resolution pass over a whole arm's box took 10 ms."""
        x0, y0, x1, y1 = box
        step = max(1, int(reach / ARM_GRID))
        gys, gxs = np.mgrid[y0 : y1 + step : step, x0 : x1 + step : step].astype(np.float32)
        fields = np.stack(chain_coords(gxs, gys, chain), axis=-1).astype(np.float32)
        fields = cv2.resize(fields, (fields.shape[1] * step, fields.shape[0] * step), interpolation=cv2.INTER_LINEAR)
        # cv2's pixel centres: grid node k sits at k * step + (step - 1) / 2 after scaling; shift back.
        offset = (step - 1) // 2
        fields = fields[offset : offset + y1 - y0, offset : offset + x1 - x0]
        ys, xs = np.mgrid[y0:y1, x0:x1]
        return xs, ys, fields[..., 0], fields[..., 1]

    def arm_tube(self, side: str, length: float) -> np.ndarray:
        """The arm's silhouette within SLEEVE_REACH of its bones, from the shoulder joint down
        to arc length `length`: the shape of a sleeve of that length (face and hair in front)."""
        chain = arm_chain(self.pts, side)[:3]
        reach = SLEEVE_REACH * self.frame.shoulder_width
        # Only the arm down to the sleeve's end is looked at.
        end, _ = _polyline_at(chain, length)
        corners = np.array([chain[0], end] + [p for p in chain[1:] if np.linalg.norm(p - chain[0]) < length])
        tube = np.zeros((self.height, self.width), bool)
        box = self._box(corners, reach)
        if box is None:
            return tube
        x0, y0, x1, y1 = box
        # Exact, not on _chain_coords' grid: the sleeve's cuff and shoulder cap are edges the
        # garment shows (on the grid, the arc behind the shoulder was off by up to 12 pixels).
        ys, xs = np.mgrid[y0:y1, x0:x1]
        distance, arc = chain_coords(xs, ys, chain)
        # Round the shoulder joint the sleeve goes on outwards only: the cap towards the neck
        # would take the sleeve's colours into the collar.
        sign = self.side_sign(side)
        joint_across = self.frame.coords(chain[0][:1], chain[0][1:])[1][0] * sign
        across = self.frame.coords(xs, ys)[1] * sign
        cap = across >= joint_across - 0.5 * reach / self.frame.length
        tube[y0:y1, x0:x1] = (distance <= reach) & ((arc >= 0.0) | cap) & (arc <= length) & self.visible[y0:y1, x0:x1]
        return tube

    def arm_beyond(self, side: str, length: float) -> np.ndarray:
        """HxW bool: the arm's capsule (ARM_TAPER, as fusion paints an arm's skin) past arc length
        `length` from the shoulder joint, outside the torso (the shoulder-hip quadrilateral), on
        the visible silhouette, when the old garment's sleeve hides the whole arm down to the
        wrist: where a sleeve that long leaves a sleeved arm bare. The parse does not tell a
        sleeved arm hanging against the torso from it; this says the arm is there, in front of a
        shorter garment's torso. Where the parse sees any stretch of the arm's skin (a short old
        sleeve) it knows the arm (`arm_skin` is in front of the torso), and the capsule, never
        quite on the arm, is not used: on VITON's short-sleeved shoppers it cut their tops' sides."""
        beyond = np.zeros((self.height, self.width), bool)
        if not arm_seen(self.visibility, side):
            return beyond  # an arm behind the body, or out of the photo
        chain = arm_chain(self.pts, side)
        radii = np.array(ARM_TAPER) * self.frame.shoulder_width
        reach = float(radii.max())
        box = self._box(np.array(chain), reach)
        if box is None:
            return beyond
        x0, y0, x1, y1 = box
        _, _, distance, arc = self._chain_coords(chain, box, reach)
        elbow_arc = float(np.linalg.norm(chain[1] - chain[0]))
        wrist_arc = elbow_arc + float(np.linalg.norm(chain[2] - chain[1]))
        capsule = (distance <= np.interp(arc, [0.0, elbow_arc, wrist_arc], radii)) & self.visible[y0:y1, x0:x1]
        # Along the arm down to the wrist, stretches of two upper-arm radii: is any of them bare skin?
        arm = capsule & (arc < wrist_arc)
        stretch = (arc[arm] / (2.0 * reach)).astype(int)
        if (np.bincount(stretch, self.arm_skin[y0:y1, x0:x1][arm]) >= BARE_STRETCH * np.bincount(stretch)).any():
            return beyond
        beyond[y0:y1, x0:x1] = capsule & (arc > length)
        return beyond & ~self.torso_quad

    @functools.cached_property
    def torso_quad(self) -> np.ndarray:
        """HxW bool: the quadrilateral of the shoulder and hip joints."""
        quad = np.zeros((self.height, self.width), np.uint8)
        cv2.fillPoly(quad, [np.round(torso_corners(self.pts)).astype(np.int32)], 1)
        return quad.astype(bool)

    def neck(self) -> np.ndarray:
        """HxW bool: bare skin above NECK_SKIN_T, the neck, which is in front of a garment's inside back."""
        ys, xs = np.nonzero(self.labels == LIP["torso_skin"])
        high = self.frame.coords(xs.astype(np.float32), ys.astype(np.float32))[0] < NECK_SKIN_T
        neck = np.zeros((self.height, self.width), bool)
        neck[ys[high], xs[high]] = True
        return neck

    def collar(self) -> np.ndarray:
        """HxW bool: a box around the neck's base (body-frame COLLAR_BOX), where a garment's
        inside back can land; it keeps that part's sampling to a small box of the canvas."""
        (t0, t1), half = COLLAR_BOX[:2], COLLAR_BOX[2] * self.frame.shoulder_width / self.frame.length
        corners = [self.at(t0, -half), self.at(t0, half), self.at(t1, half), self.at(t1, -half)]
        box = np.zeros((self.height, self.width), np.uint8)
        cv2.fillPoly(box, [np.round(corners).astype(np.int32)], 1)
        return box.astype(bool)

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
        first point off the silhouette or on a bare arm. Below HIPS_T the silhouette is legs
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
        # A sleeved arm against the torso is not told apart from it: the torso may reach over
        # it (the sleeve goes on top), which on VITON fits the garment's sides far better than
        # stopping at the arm bone's capsule did.
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
    """A top or dress: the torso part (landmarks onto the body), then a part per sleeve."""
    mask = garment.mask
    f = body.frame
    sw, length = f.shoulder_width, f.length
    g_span = np.linalg.norm(_g(garment, "shoulder_left") - _g(garment, "shoulder_right"))
    p_span = np.linalg.norm(body.shoulder("left") - body.shoulder("right"))
    scale = LENGTH_SCALE * p_span / max(g_span, 1.0)  # person pixels per garment pixel
    g_shoulder_y = (_g(garment, "shoulder_left")[1] + _g(garment, "shoulder_right")[1]) / 2
    t_of = lambda y: -SHOULDER_UP + (y - g_shoulder_y) * scale / length  # noqa: E731
    hem_range = HEM_T["dress" if garment.category == "dress" else "upper"]
    if garment.category == "dress":  # a long dress ends at the ankles, not over the shoes
        ankles_t = min(float(f.coords(*landmark(body.pts, f"{side}_ankle"))[0]) for side in ("left", "right"))
        hem_range = (hem_range[0], max(hem_range[0], min(hem_range[1], ankles_t)))

    # The front neckline sits at the neck's base; where the inside back shows above it, the
    # back collar rises behind the neck.
    g_neck = _g(garment, "neckline_front" if "neckline_front" in garment.landmarks else "neckline")
    g_pts: list[np.ndarray] = [g_neck]
    c_pts: list[np.ndarray] = [body.at(-NECK_UP, 0.0)]
    side_points = {}
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
        g_pts += [_g(garment, f"collar_{side}"), _g(garment, f"shoulder_{side}")]
        c_pts += [body.at(-COLLAR_UP, sign * COLLAR_ACROSS * sw / length), body.shoulder(side)]
        g_sides = [g_armpit, *_side_walk(mask, g_armpit, g_hem, SIDE_FRACTIONS), g_hem]
        c_sides = [c_armpit, *(body.torso_edge(t_armpit + f * (t_hem - t_armpit), side) for f in SIDE_FRACTIONS), c_hem]
        g_pts += g_sides
        c_pts += c_sides
        side_points[side] = (g_sides, c_sides)
    # The centre line, so that prints stay straight: from the neckline, then level with each
    # pair of side points (armpits, sides, hem) and midway between them. The sides' heights on
    # the body are not one linear map of the flat-lay's (the armpits are clipped to ARMPIT_T,
    # a top's hem is drawn to the prior): a centre line mapped on its own would put a stripe
    # lower in the middle than at the sides, and dresses' stripes would bow into arcs.
    c_neck = body.at(-NECK_UP, 0.0)
    (g_left, c_left), (g_right, c_right) = side_points["left"], side_points["right"]
    g_level = [(a + b) / 2 for a, b in zip(g_left, g_right, strict=True)]
    c_level = [(a + b) / 2 for a, b in zip(c_left, c_right, strict=True)]
    g_hem_mid = g_level[-1]
    for g_mid, c_mid in [((g_neck + g_level[0]) / 2, (c_neck + c_level[0]) / 2), *zip(g_level, c_level, strict=True)]:
        # On the flat-lay, the straight line from neckline to hem middle at that height.
        along = (g_mid[1] - g_neck[1]) / max(g_hem_mid[1] - g_neck[1], 1.0)
        g_pts.append(np.array([g_neck[0] + along * (g_hem_mid[0] - g_neck[0]), g_mid[1]]))
        c_pts.append(c_mid)
    shown = body.torso_shown(flare=garment.category == "dress")
    if garment.category == "dress":  # its skirt hangs across the gap between the legs, as a skirt's does
        shown |= body.between_legs()
    # A top with neither sleeves found nor armpits in its outline has long sleeves laid down
    # against its body (VITON's such tops nearly all do): they are drawn along the arms.
    has_sleeves = any(f"sleeve_{side}_outer" in garment.landmarks for side in ("left", "right"))
    laid_sleeves = garment.category == "upper" and not has_sleeves and not has_armholes(garment.mask)
    # An arm past the new sleeve's end is bare and in front of the torso, though the old sleeve
    # hid it: a tee over a long-sleeved top does not lay its body over the arms hanging beside it.
    if garment.category == "upper" and not laid_sleeves:
        reach = sleeve_reach(garment) * p_span / max(g_span, 1.0)
        for side in ("left", "right"):
            shown &= ~body.arm_beyond(side, reach)
    back = inside_back(garment)
    torso = Part(np.array(g_pts), np.array(c_pts), mask & ~back, shown)
    sleeves = [sleeve_part(garment, body, side, p_span / max(g_span, 1.0), laid_sleeves) for side in ("left", "right")]
    # The inside back, seen through the neck opening, is behind everything, and behind the neck.
    parts = [Part(torso.garment, torso.canvas, mask & back, shown & ~body.neck() & body.collar())] if back.any() else []
    # The torso goes on top: where its spline lays the flat-lay's own sleeves on the body they
    # keep the garment whole (the print runs on across the shoulder seam); the sleeve parts show
    # where the arm goes beyond them, as a long sleeve down a hanging arm does.
    return [*parts, *(sleeve for sleeve in sleeves if sleeve is not None), torso]


def inside_back(garment: GarmentAnalysis) -> np.ndarray:
    """HxW bool in garment pixels: the inside back seen through the neck opening, above the
    front neckline (a parabola from collar point to collar point through "neckline_front");
    all False when the analysis found no front neckline."""
    region = np.zeros(garment.mask.shape, np.uint8)
    if "neckline_front" not in garment.landmarks:
        return region.astype(bool)
    front = _g(garment, "neckline_front")
    right, left = _g(garment, "collar_right"), _g(garment, "collar_left")
    xs = np.linspace(right[0], left[0], 17)
    ends_y = np.interp(xs, [right[0], left[0]], [right[1], left[1]])
    half = max(abs(left[0] - right[0]) / 2, 1.0)
    curve_y = front[1] + (ends_y - front[1]) * ((xs - front[0]) / half) ** 2
    outline = np.column_stack([xs, np.minimum(curve_y, front[1])])
    polygon = np.vstack([outline, [[left[0], 0.0], [right[0], 0.0]]])
    cv2.fillPoly(region, [np.round(polygon).astype(np.int32)], 1)
    return region.astype(bool)


def _perpendicular(direction: np.ndarray) -> np.ndarray:
    return np.array([-direction[1], direction[0]])


def sleeve_reach(garment: GarmentAnalysis) -> float:
    """How far (garment pixels) the flat-lay's sleeves reach from their shoulder points, the longer
    of the two (garments are symmetric); 0 for a sleeveless top. A sleeve is what lies outside the
    body: SLEEVE_MARGIN of the shoulder span out past the armpit and no lower than that below it
    (lower down, it is the body's flare or a peplum), or apart from the body's run of pixels
    through the centre (a long sleeve laid down beside the body, whose outer corner the analysis
    may not find; pieces under SLEEVE_MARGIN high, such as a ragged hem's, are not sleeves).
    Measured on the mask rather than between the cuff's corners: a short sleeve's outer seam is
    longer than its axis, and a tee's sleeves are not always found. Worked out on the mask
    scaled to REACH_SIDE pixels."""
    scale = min(1.0, REACH_SIDE / max(garment.mask.shape))
    small = cv2.resize(garment.mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # Holes in the mask (a print the segmentation took for backdrop) are not gaps between pieces.
    contours, _ = cv2.findContours((small > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = cv2.drawContours(np.zeros(small.shape, np.uint8), contours, -1, 1, -1).astype(bool)
    if not mask.any():
        return 0.0
    margin = SLEEVE_MARGIN * scale * float(np.linalg.norm(_g(garment, "shoulder_left") - _g(garment, "shoulder_right")))
    columns = np.flatnonzero(mask.any(axis=0))
    centre = (columns[0] + columns[-1]) // 2
    # Each row's run of garment through the centre column is the body; what is apart from it,
    # on a row through the body, is a sleeve laid beside it.
    xs_row = np.arange(mask.shape[1])
    left_gap = np.where(~mask & (xs_row < centre), xs_row, -1).max(axis=1)
    right_gap = np.where(~mask & (xs_row > centre), xs_row, mask.shape[1]).min(axis=1)
    apart = mask & mask[:, centre : centre + 1] & ((xs_row <= left_gap[:, None]) | (xs_row >= right_gap[:, None]))
    _, pieces, stats, _ = cv2.connectedComponentsWithStats(apart.astype(np.uint8), connectivity=8)
    tall = np.flatnonzero(stats[:, cv2.CC_STAT_HEIGHT] >= margin)
    apart = np.isin(pieces, tall[tall > 0])
    reach = 0.0
    for side in ("left", "right"):
        shoulder, armpit = _g(garment, f"shoulder_{side}") * scale, _g(garment, f"armpit_{side}") * scale
        outward = np.sign(shoulder[0] - centre) or 1.0
        sleeve = apart | (mask & (outward * (xs_row - armpit[0]) > margin)[None, :])
        sleeve[max(0, int(armpit[1] + margin)) :] &= apart[max(0, int(armpit[1] + margin)) :]
        sleeve &= (outward * (xs_row - centre) > 0)[None, :]
        sleeve[: max(0, int(shoulder[1]))] = False
        ys, xs = np.nonzero(sleeve)
        if len(ys):
            reach = max(reach, float(np.hypot(xs - shoulder[0], ys - shoulder[1]).max()) / scale)
    return reach


def laid_sleeve(garment: GarmentAnalysis, side: str) -> tuple[np.ndarray, ...]:
    """(shoulder, armpit, outer cuff corner, inner cuff corner) on the flat-lay of a long sleeve laid
    down against the body, whose outline has no armpit and whose cuff corners the analysis did
    not find: the sleeve is the strip down the garment's outer edge from its shoulder to its
    lowest outer point, LAID_SLEEVE of the shoulder span wide (a root half again as wide). Only
    the sleeve's colours come from there: its shape on the person is the arm's."""
    shoulder = _g(garment, f"shoulder_{side}")
    span = float(np.linalg.norm(_g(garment, "shoulder_left") - _g(garment, "shoulder_right")))
    inward = -1.0 if shoulder[0] > _g(garment, "neckline")[0] else 1.0
    ys, xs = np.nonzero(garment.mask)
    low = ys >= ys.max() - LAID_SLEEVE * span  # the cuff's rows
    outer_x = xs[low].min() if inward > 0 else xs[low].max()
    outer = np.array([outer_x, ys[low][xs[low] == outer_x].max()], float)
    width = LAID_SLEEVE * span
    armpit = shoulder + np.array([inward * 1.5 * width, 1.5 * width])
    return shoulder, armpit, outer, outer + np.array([inward * width, 0.0])


def sleeve_part(garment: GarmentAnalysis, body: Body, side: str, scale: float, laid: bool = False) -> Part | None:
    """The sleeve on `side` laid along its arm, or None for a garment without one. With `laid`,
    the garment's long sleeves lie down against its body (`laid_sleeve`).

    Its spline takes the arm's bones (shoulder, elbow, wrist) to the flat-lay sleeve's axis
    (the middle of its root, shoulder seam to armpit, to the middle of its cuff), and the
    sleeve's width across each. Its shape on the canvas is the arm's (Body.arm_tube) down to
    the sleeve's length, so it has no alpha of its own in the garment: run() extends the
    garment's colours past its outline for the pixels of the arm a narrow sleeve does not reach."""
    if laid:
        g_shoulder, g_armpit, g_outer, g_inner = laid_sleeve(garment, side)
    elif f"sleeve_{side}_outer" in garment.landmarks:
        g_shoulder, g_armpit = _g(garment, f"shoulder_{side}"), _g(garment, f"armpit_{side}")
        g_outer, g_inner = _g(garment, f"sleeve_{side}_outer"), _g(garment, f"sleeve_{side}_inner")
    else:
        return None
    g_root, g_cuff = (g_shoulder + g_armpit) / 2, (g_outer + g_inner) / 2
    g_length = float(np.linalg.norm(g_cuff - g_root))
    if g_length < 1.0:
        return None
    g_axis = (g_cuff - g_root) / g_length
    g_out = _perpendicular(g_axis) * (np.sign(_perpendicular(g_axis) @ (g_shoulder - g_armpit)) or 1.0)
    half_root, half_cuff = np.linalg.norm(g_shoulder - g_armpit) / 2, np.linalg.norm(g_outer - g_inner) / 2
    length = g_length * scale
    chain = arm_chain(body.pts, side)[:3]
    first = _polyline_at(chain, 0.0)[1]
    # The arm's outer side (away from the body, where the shoulder seam goes) keeps one
    # handedness along the whole arm, so that a bent forearm's sleeve does not flip.
    handedness = np.sign(_perpendicular(first) @ (chain[0] - body.frame.origin)) or 1.0
    g_pts, c_pts = [], []
    for u in SLEEVE_STATIONS:
        point, direction = _polyline_at(chain, u * length)
        out = handedness * _perpendicular(direction)
        half = half_root + np.clip(u, 0.0, 1.0) * (half_cuff - half_root)
        for across in (-1.0, 0.0, 1.0):
            g_pts.append(g_root + max(u, 0.0) * g_length * g_axis + across * half * g_out)
            c_pts.append(point + across * half * scale * out)
    return Part(np.array(g_pts), np.array(c_pts), None, body.arm_tube(side, length))


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
    c_waist = {s: body.torso_edge(body.waist_t(), s) for s in ("left", "right")}
    scale = np.linalg.norm(c_waist["left"] - c_waist["right"]) / max(
        np.linalg.norm(g_waist["left"] - g_waist["right"]), 1.0
    )
    # A skirt (no crotch) is one piece across both legs: its hem's inner points, where the
    # analysis finds them, would pull it onto each leg as a tube.
    skirt = "crotch" not in garment.landmarks
    g_pts, c_pts = [], []
    for side in ("left", "right"):
        g_pts.append(g_waist[side])
        c_pts.append(c_waist[side])
        _hip, knee, ankle, _ = leg_chain(body.pts, side)
        g_outer = _g(garment, f"hem_{side}_outer")
        g_inner = None if skirt else garment.landmarks.get(f"hem_{side}_inner")
        chain = [c_waist[side], knee, ankle]
        # A garment longer than the leg ends at the ankle (a maxi skirt falls to the floor, not
        # over the shoes): laid past it, it covered the feet and left bars of backdrop between them.
        leg_length = sum(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(chain))
        g_len = min(float(np.linalg.norm(g_outer - g_waist[side])) * scale, leg_length)
        c_hem, direction = _polyline_at(chain, g_len)
        normal = _perpendicular(direction)
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
    shown = body.torso_shown(flare=False)
    if skirt:  # it hangs across the gap between the legs too
        shown |= body.between_legs()
    return [Part(np.array(g_pts), np.array(c_pts), garment.mask.copy(), shown)]


def extend_colours(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`rgb` with every pixel outside `mask`, and its fringe, given the colour of the garment
    nearest to it. Worked out at a quarter of the size: only the sleeves' overshoot past the
    outline reads it. The fringe mixes in the backdrop, so it is neither kept nor spread."""
    h, w = mask.shape
    small_size = (max(1, w // 4), max(1, h // 4))
    weight = cv2.resize(mask.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    known = cv2.erode((weight > 0.99).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if not known.any():
        return rgb
    small = cv2.resize(rgb, small_size, interpolation=cv2.INTER_AREA)
    _, nearest = cv2.distanceTransformWithLabels(
        (~known).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(known)  # label k is the k-th known pixel in row-major order
    filled = cv2.resize(small[ys, xs][nearest - 1], (w, h), interpolation=cv2.INTER_LINEAR)
    inner = cv2.resize(known.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR) > 0
    cv2.copyTo(rgb, (inner & mask).astype(np.uint8), filled)
    return filled


def run(
    garment_image: np.ndarray,
    garment: GarmentAnalysis,
    pose: PoseResult,
    parse: ParseResult,
    infer: Infer,
    learned: str | None = None,
) -> WarpResult:
    """The garment on the person's canvas: RGBA float32 in [0, 1] at the photo's resolution.
    With `learned` (the name of installed weights), the learned warp corrects the geometric one."""
    body = Body(pose, parse)
    parts = lower_parts(garment, body) if garment.category == "lower" else upper_parts(garment, body)
    height, width = parse.image_height, parse.image_width
    unit = float(max(height, width))
    g_h, g_w = garment.mask.shape
    shrink = min(1.0, GARMENT_MAX_SIDE / max(g_h, g_w))
    size = (max(1, round(g_w * shrink)), max(1, round(g_h * shrink)))
    rgb = np.ascontiguousarray(garment_image[..., :3])
    mask = garment.mask
    if shrink < 1:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if any(part.alpha is None for part in parts):
        rgb = extend_colours(rgb, mask)
    control = np.zeros((1, PARTS, tps.MAX_POINTS, 2), np.float32)
    shown = np.zeros((1, PARTS, height, width), np.uint8)
    weights = np.zeros((1, PARTS, tps.MAX_POINTS + 3, 2), np.float32)
    alpha = np.zeros((1, PARTS, size[1], size[0]), np.float32)
    to_unit = np.array([2.0 / (g_w - 1), 2.0 / (g_h - 1)])
    # The mask's outermost pixels mix in the backdrop (a pale fringe on the person): the garment's
    # outline is trimmed, not each part's, so that parts meet without a seam.
    trim = round(EDGE_TRIM * max(g_h, g_w))
    trimmed = garment.mask
    if trim:
        trimmed = cv2.erode(trimmed.astype(np.uint8), np.ones((2 * trim + 1,) * 2, np.uint8)).astype(bool)
    for p, part in enumerate(parts[:PARTS]):
        source = part.canvas / unit
        target = part.garment * to_unit - 1.0
        control[0, p], weights[0, p] = tps.padded(source, tps.fit(source, target, REGULARISATION))
        shown[0, p] = part.shown
        if part.alpha is None:  # shaped by `shown` alone, coloured from anywhere in the garment
            alpha[0, p] = 1.0
            continue
        part_alpha = (part.alpha & trimmed).astype(np.float32)
        alpha[0, p] = cv2.resize(part_alpha, size, interpolation=cv2.INTER_AREA) if shrink < 1 else part_alpha
    outputs = infer(
        MODEL_NAME,
        {
            "rgb__0": (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None],
            "part_alpha__1": alpha,
            "control_points__2": control,
            "weights__3": weights,
            "canvas_size__4": np.array([[height, width]], np.int32),
            "canvas_mask__5": shown,
        },
    )
    rgba = outputs["warped__0"][0].transpose(1, 2, 0)
    if learned:
        rgba = learned_warp(rgba, pose, parse, garment.category, infer, learned)
    return WarpResult(image_width=width, image_height=height, category=garment.category, rgba=rgba)


def learned_warp(
    geometric: np.ndarray, pose: PoseResult, parse: ParseResult, category: Category, infer: Infer, weights: str
) -> np.ndarray:
    """The geometric warp (HxWx4) of a garment of `category` resampled through the learned flow of
    warp_gmm-`weights` (services/warp/gmm.py); face and hair stay in front of it, as in the
    geometric warp."""
    premult = gmm.premultiply(geometric)
    person = gmm.person_representation(parse.labels, pose.landmark_array(), category, parse.one_colour_outfit)
    inputs = {
        "garment__0": gmm.pooled(premult, gmm.work_size(*geometric.shape[:2]), gmm.alpha_box(premult[..., 3])),
        "person__1": person[None],
    }
    try:
        flow = infer(learned.warp_model(weights), inputs)["flow__0"][0]
    except ModelUnavailable as exc:
        raise learned.unavailable(exc, weights) from exc
    rgba = gmm.resample(premult, flow)
    # The hands too: the flow can carry a long sleeve's cuff past the wrist, and the try-on
    # generator lays the garment wherever its alpha is (grey cuffs over a hand at the hip).
    points = pose.landmark_array()[:, :2]
    front = any_of(parse.labels, (LIP["face"], LIP["hair"])) | hands(
        parse.labels, points, BodyFrame.from_points(points).length
    )
    rgba[..., 3][front] = 0.0
    return rgba
