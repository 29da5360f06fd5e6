"""Try-off: the garment a person wears, as a frontal flat-lay product image (the warp read backwards).

The warp takes a flat-lay's landmarks to body points (services/warp/stage.py: upper_parts,
lower_parts, sleeve_part). Try-off lays a canonical flat-lay of the category (LAYOUTS: landmark
positions fitted on VITON's product shots) on the person with those same functions, then fits
each part's thin-plate spline the other way round, flat-lay -> person, and samples the photo and
its parse through it:

1. Layout: the canonical flat-lay of the category on an output canvas of the photo's size
   (centred in the largest 3:4 box). A top's sleeves are short or long as the person's are
   (`sleeve_kind`, measured along the arm on the parse), sleeveless where the arm is bare.
2. Map: each flat-lay pixel belongs to one part (the torso, or a sleeve's band around its axis);
   the part's spline gives the photo pixel it shows. Splines are evaluated on a coarse grid and
   interpolated (they are smooth), then cv2.remap samples the photo and the labels.
3. Mask: what the parse calls the category's garment. What hair or arms hide of it (their labels
   land inside the garment's outline: between its visible pixels on the row, or where the mirror
   image is garment, flat-lays being symmetric) is garment too. That laid outline is ragged (the
   parse's edge through the splines) and has gaps; the flat-lay's outline is the canonical
   layout with its hem moved to the laid garment's, joined by the laid outline made symmetric
   and smooth where it lies near the layout (`regular_outline`).
4. Colours: the photo's, from pixels well inside the garment (the parse's edge mixes in skin and
   backdrop) and not the colour of a part of the wearer they lie near (`looks_like_the_wearer`);
   the hidden and the fringe from the mirror image where it shows, else filled by push-pull from
   the garment's own colours.

The learned path (services/warp/tryoff_net.py: a small U-Net trained on paired photos by
`fitroom train tryoff`, installed with `fitroom models install`) starts from this one: `extract`
runs it when given the name of installed weights.

Scoring a flat-lay (training's held-out figures and bench/tryoff_quality.py, one definition):
`aligned` fits a flat-lay by its mask's box into a white CANVAS less MARGIN, and `scores` gives
the two masks' IoU and the grey SSIM of the two canvases.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from services.common.contracts import LIP, Category, GarmentAnalysis, ParseResult, PoseResult
from services.common.errors import GarmentNotDetected
from services.common.inference import Infer
from services.parser import colour
from services.parser.agnostic import any_of
from services.parser.geometry import arm_chain, chain_coords
from services.parser.stage import GARMENT_MIN_STD
from services.warp import tps
from services.warp.garment import LOWER_ORDER, UPPER_ORDER
from services.warp.gmm import alpha_box
from services.warp.stage import REGULARISATION, Body, Part, lower_parts, upper_parts

SleeveKind = Literal["none", "short", "long"]

# Bump when the default's flat-lay changes: training's cached try-off rows (services/train.py) hold
# the default's output, and are prepared again under a new version.
VERSION = 6

# Canonical flat-lays, as fractions of a 3:4 (width:height) box, right side only (the wearer's
# right, the image's left); the left side is its mirror image. "upper" short and long: medians of
# the landmarks services/warp/garment.py finds on VITON product shots (400 tops, 90 long-sleeved,
# none of bench/viton_split.py's validation ids); the long cuff, which the analysis places poorly,
# read off those images. Dress and lower: drawn after DressCode's product shots (not measured).
_UPPER_TORSO = {
    "neckline": (0.5, 0.074),
    "collar_right": (0.323, 0.053),
    "shoulder_right": (0.175, 0.098),
    "armpit_right": (0.211, 0.407),
    "hem_right": (0.196, 0.916),
}
_SHORT_SLEEVE = {"sleeve_right_outer": (0.088, 0.181), "sleeve_right_inner": (0.047, 0.377)}
_LONG_SLEEVE = {"sleeve_right_outer": (0.07, 0.86), "sleeve_right_inner": (0.15, 0.89)}
_DRESS_TORSO = {
    "neckline": (0.5, 0.07),
    "collar_right": (0.4, 0.04),
    "shoulder_right": (0.33, 0.05),
    "armpit_right": (0.33, 0.24),
    "hem_right": (0.16, 0.96),
}
_DRESS_SHORT_SLEEVE = {"sleeve_right_outer": (0.22, 0.12), "sleeve_right_inner": (0.24, 0.22)}
_DRESS_LONG_SLEEVE = {"sleeve_right_outer": (0.18, 0.6), "sleeve_right_inner": (0.24, 0.6)}
_TROUSERS = {
    "waist_right": (0.3, 0.04),
    "hem_right_outer": (0.24, 0.96),
    "hem_right_inner": (0.46, 0.96),
    "crotch": (0.5, 0.33),
}
LAYOUT_ASPECT = 3 / 4  # width / height of the box the layout is drawn in

# What the parse calls the worn garment of each category: our parser names tops upper_clothes
# and everything below the hips pants (a dress is both).
GARMENT_LABELS: dict[Category, tuple[int, ...]] = {
    "upper": (LIP["upper_clothes"], LIP["coat"]),
    "lower": (LIP["pants"], LIP["skirt"]),
    "dress": (LIP["dress"], LIP["upper_clothes"], LIP["coat"], LIP["pants"], LIP["skirt"]),
}
# What may lie in front of a garment: its pixels under these are filled, not cut out.
IN_FRONT = (LIP["hair"], LIP["left_arm"], LIP["right_arm"], LIP["glove"], LIP["scarf"])
MIN_GARMENT_SHARE = 0.02  # of the person's pixels: less is "not wearing one"
GRID_STEP = 8  # output pixels between the points where the splines are evaluated
SLEEVE_BAND = 1.5  # a sleeve's part of the flat-lay: this many of its half-widths around its axis
SLEEVE_REACH = 1.6  # and this many of its template lengths along it
TORSO_MARGIN = 0.0  # of the box width: the torso's part reaches this far past the layout's sides
# Sleeve length, as a share of the arm (shoulder to wrist) its garment covers: below SHORT the arm
# is bare (sleeveless), from LONG on the sleeve is long. Fitted with `regular_outline` on 300 VITON
# training pairs (not the validation split) for the shorter arm. The two arms' mean did as well
# there (outline IoU 0.760 against 0.757; 0.752 against 0.753 on the validation split) and the
# longer arm, the old rule, worse (0.750, 0.753 refitted); the shorter arm is kept for its reason.
# ARM_CORE: of the shoulder width, the arm pixels measured lie this close to its bones (beyond,
# an arm against the body meets the torso).
SLEEVE_SHORT, SLEEVE_LONG, ARM_CORE = 0.1, 0.7, 0.1
# Where a sleeve ends (`covered_shares`): bare for this many tenths of the arm in a row. On 400
# training pairs, outline IoU 0.763 (one tenth, the rule before) -> 0.766 (two) -> 0.768 (three);
# the sleeve kind whose outline scores best chosen 80% -> 84% of the time.
BARE_RUN = 3
EDGE_INSET = 0.006  # of the canvas's longer side: the parse's edge, recoloured from inside
MIN_PART = 0.05  # of the largest: smaller specks of mask are dropped
OUTLINE_SMOOTH = 0.015  # of the canvas's longer side: the Gaussian that smooths the laid outline
NEAR_LAYOUT = 0.05  # of the layout box's width: how far the laid outline may stand off the layout
WEARER_MARGIN = 2.0  # nats: how much better another part of the wearer must explain a laid pixel's colour
WEARER_REACH = 0.03  # of the canvas's longer side: how near a part of the wearer a pixel must be to be taken for it
SKIN = (LIP["face"], LIP["torso_skin"], LIP["left_arm"], LIP["right_arm"])
WEARER_WORK = 384  # pixels on the longer side: where the wearer's colours are judged
OUTLINE_WORK = 256  # pixels on the longer side: the size the outline is regularised at


@dataclass(frozen=True)
class Tryoff:
    """A try-off: the flat-lay (HxWx4 uint8, RGBA on the photo-sized canvas) and what it is."""

    rgba: np.ndarray
    category: Category
    sleeves: SleeveKind
    hidden_share: float  # of the garment's flat-lay pixels, the share hidden on the photo and filled


def extract(
    image: np.ndarray,
    pose: PoseResult,
    parse: ParseResult,
    category: Category,
    learned: str | None = None,
    infer: Infer | None = None,
) -> Tryoff:
    """The garment of `category` that the person in `image` (RGB uint8) wears, as a flat-lay.
    With `learned` (the name of installed weights, FITROOM_LEARNED_TRYOFF), the learned try-off
    through `infer`; ModelUnavailable, with the command that installs them, when they are not."""
    if learned:
        if infer is None:
            raise ValueError("the learned try-off runs through an inference backend: pass infer")
        from services.warp import tryoff_net

        return tryoff_net.learned_tryoff(image, pose, parse, category, infer, learned)
    return default_tryoff(image, pose, parse, category)


def wears(parse: ParseResult, category: Category) -> bool:
    """Whether the parse shows a garment of `category`: at least MIN_GARMENT_SHARE of the person."""
    person = int((parse.labels != LIP["background"]).sum())
    garment = int(any_of(parse.labels, GARMENT_LABELS[category]).sum())
    return person > 0 and garment >= MIN_GARMENT_SHARE * person


def default_tryoff(image: np.ndarray, pose: PoseResult, parse: ParseResult, category: Category) -> Tryoff:
    """The geometric try-off (module docstring). GarmentNotDetected when the person wears no garment
    of `category`."""
    if not wears(parse, category):
        raise GarmentNotDetected(f"the person wears no {category} garment that the parse can see")
    body = Body(pose, parse)
    height, width = image.shape[:2]
    sleeves = sleeve_kind(body, category) if category != "lower" else "none"
    layout = canonical_layout(category, sleeves, (width, height))
    parts = lower_parts(layout, body) if category == "lower" else upper_parts(layout, body)
    if sleeves != "long":
        # Short sleeves stay close to the shoulders, where the torso's spline lays them (as the warp
        # does): laid along the arm instead they come apart from the torso (tried on VITON).
        parts = [part for part in parts if part.alpha is not None]
    map_x, map_y, region = flatlay_map(layout, parts, (width, height))

    labels = cv2.remap(parse.labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    colours = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    visible = any_of(labels, GARMENT_LABELS[category]) & region
    # Hidden garment only within the layout's own outline: hair above the collar or an arm beside the
    # torso is not garment.
    hidden = any_of(labels, IN_FRONT) & region & layout.mask & ~visible
    laid = clean(visible | (hidden & inside_outline(visible)))
    if not laid.any():
        raise GarmentNotDetected(f"no {category} garment could be laid flat from this photo")
    mask = regular_outline(laid, layout)
    own = visible & mask & ~looks_like_the_wearer(image, parse, colours, labels, visible & mask, category)
    rgb = fill_colours(colours, own, mask)
    rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    rgba[..., 3] = mask.view(np.uint8) * np.uint8(255)
    share = float((mask & ~visible).sum() / mask.sum())
    return Tryoff(rgba=rgba, category=category, sleeves=sleeves, hidden_share=round(share, 3))


# --------------------------------------------------------------------------- layout


def layout_box(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x0, y0, width, height): the largest LAYOUT_ASPECT box centred in a canvas of `size`."""
    width, height = size
    box_w = min(float(width), height * LAYOUT_ASPECT)
    box_h = box_w / LAYOUT_ASPECT
    return (width - box_w) / 2, (height - box_h) / 2, box_w, box_h


def layout_points(category: Category, sleeves: SleeveKind) -> dict[str, tuple[float, float]]:
    """The category's canonical landmarks, both sides, as fractions of the layout box."""
    if category == "lower":
        right = dict(_TROUSERS)
    else:
        torso = _UPPER_TORSO if category == "upper" else _DRESS_TORSO
        short, long = (
            (_SHORT_SLEEVE, _LONG_SLEEVE) if category == "upper" else (_DRESS_SHORT_SLEEVE, _DRESS_LONG_SLEEVE)
        )
        right = {**torso, **({"short": short, "long": long}.get(sleeves, {}))}
    points = dict(right)
    for name, (x, y) in right.items():
        if "right" in name:
            points[name.replace("right", "left")] = (1.0 - x, y)
    order = LOWER_ORDER if category == "lower" else UPPER_ORDER
    return {name: points[name] for name in order if name in points}


def canonical_layout(category: Category, sleeves: SleeveKind, size: tuple[int, int]) -> GarmentAnalysis:
    """The canonical flat-lay as a garment analysis on a canvas of `size` (width, height): its
    landmarks, and its mask the polygon through them (the outline's order)."""
    x0, y0, box_w, box_h = layout_box(size)
    landmarks = {name: (x0 + x * box_w, y0 + y * box_h) for name, (x, y) in layout_points(category, sleeves).items()}
    mask = np.zeros(size[::-1], np.uint8)
    cv2.fillPoly(mask, [np.round(np.array(list(landmarks.values()))).astype(np.int32)], 1)
    return GarmentAnalysis(
        image_width=size[0], image_height=size[1], category=category, landmarks=landmarks, mask=mask.astype(bool)
    )


def sleeve_kind(body: Body, category: Category) -> SleeveKind:
    """How far the garment's sleeves go down the arms: the shorter of the two sides' covered share
    of the arm (shoulder to wrist), read from the parse along each arm's bones. The shorter: an arm
    hanging against the torso reads as covered wherever its bone runs over the garment's body (the
    pose's shoulder joints lie inside the outline), and a sleeveless top's arm shows bare skin on
    the other side."""
    shares = covered_shares(body, category)
    length = min(shares, default=0.0)
    return "none" if length < SLEEVE_SHORT else "long" if length >= SLEEVE_LONG else "short"


def covered_shares(body: Body, category: Category) -> list[float]:
    """Per arm the parse shows, the share of it (shoulder to wrist) that the garment covers: along
    the arm in tenths, up to where bare skin takes more of the arm's core than the garment for
    BARE_RUN tenths in a row. One tenth is not enough: a strand of blond hair on a shoulder reads
    as skin, and a long-sleeved top came out sleeveless."""
    garment = any_of(body.labels, GARMENT_LABELS[category])
    covered = []
    for side in ("left", "right"):
        chain = arm_chain(body.pts, side)[:3]
        arm_length = float(sum(np.linalg.norm(b - a) for a, b in itertools.pairwise(chain)))
        corners = np.array(chain)
        reach = ARM_CORE * body.frame.shoulder_width
        x0, y0 = np.floor(corners.min(axis=0) - reach).astype(int).clip(0)
        x1 = min(int(np.ceil(corners[:, 0].max() + reach)) + 1, body.width)
        y1 = min(int(np.ceil(corners[:, 1].max() + reach)) + 1, body.height)
        if x1 <= x0 or y1 <= y0 or arm_length < 1.0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        distance, arc = chain_coords(xs.astype(np.float64), ys.astype(np.float64), chain)
        core = (distance <= reach) & (arc >= 0)
        clothed = garment[y0:y1, x0:x1] & core
        bare = body.arm_skin[y0:y1, x0:x1] & core
        bins = np.minimum((arc / arm_length * 10).astype(int), 9)
        n_clothed = np.bincount(bins[clothed], minlength=10)
        n_bare = np.bincount(bins[bare], minlength=10)
        if not (n_clothed + n_bare).any():
            continue  # the arm is out of the photo, or hidden: it says nothing
        share, bare_run = 0.0, 0
        for b in range(10):
            if n_clothed[b] + n_bare[b] == 0:
                continue  # out of the photo, or hidden: says nothing
            bare_run = bare_run + 1 if n_clothed[b] < n_bare[b] else 0
            if bare_run == BARE_RUN:
                break
            if not bare_run:
                share = (b + 1) / 10
        covered.append(share)
    return covered


# --------------------------------------------------------------------------- mapping


def flatlay_map(
    layout: GarmentAnalysis, parts: list[Part], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every output pixel, the photo pixel it shows (map_x, map_y: float32 HxW, for cv2.remap)
    and whether any part covers it (HxW bool). Each part's spline is fitted flat-lay -> photo on the
    same point pairs the warp fits the other way."""
    width, height = size
    unit = float(max(width, height))
    map_x = np.zeros((height, width), np.float32)
    map_y = np.zeros((height, width), np.float32)
    covered = np.zeros((height, width), bool)
    for part, region in zip(parts, part_regions(layout, parts, size), strict=True):
        box = alpha_box(region & ~covered)
        if box is None:
            continue
        # The spline on a coarse grid over the part's box only (a sleeve's band is a small part
        # of the canvas), interpolated bilinearly by remap at every pixel of the box.
        rows, cols = box
        gx = np.arange(cols.start, cols.stop + GRID_STEP, GRID_STEP, dtype=np.float64)
        gy = np.arange(rows.start, rows.stop + GRID_STEP, GRID_STEP, dtype=np.float64)
        grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        box_w, box_h = cols.stop - cols.start, rows.stop - rows.start
        on_grid_x = np.tile(np.arange(box_w, dtype=np.float32) / GRID_STEP, (box_h, 1))
        on_grid_y = np.tile(np.arange(box_h, dtype=np.float32)[:, None] / GRID_STEP, (1, box_w))
        source = part.garment / unit
        weights = tps.fit(source, part.canvas, REGULARISATION)
        coarse = tps.evaluate(source, weights, grid / unit).reshape(len(gy), len(gx), 2).astype(np.float32)
        full = cv2.remap(coarse, on_grid_x, on_grid_y, cv2.INTER_LINEAR)
        take = region[box] & ~covered[box]
        if part.alpha is None:  # a sleeve: only where it lands on its arm (Body.arm_tube)
            shown = part.shown.astype(np.uint8)
            take &= cv2.remap(shown, full[..., 0], full[..., 1], cv2.INTER_NEAREST, borderValue=0).astype(bool)
        map_x[box][take], map_y[box][take] = full[..., 0][take], full[..., 1][take]
        covered[box] |= take
    return map_x, map_y, covered


def part_regions(layout: GarmentAnalysis, parts: list[Part], size: tuple[int, int]) -> list[np.ndarray]:
    """Which flat-lay pixels each part lays out (HxW bool each, in the order of `parts`): a sleeve
    (a part shaped by its arm, alpha None) its band around its axis; the torso (or a lower garment)
    the rest of the layout, widened by TORSO_MARGIN below its armpits and down to the canvas's
    foot (a long top or dress may be longer than the layout)."""
    width, height = size
    marks = {name: np.array(p) for name, p in layout.landmarks.items()}
    margin = TORSO_MARGIN * layout_box(size)[2]
    torso = np.zeros((height, width), np.uint8)
    if layout.category == "lower":
        outline = [marks["waist_right"], marks["hem_right_outer"], marks["hem_left_outer"], marks["waist_left"]]
        outline = [outline[0] + (-margin, 0), outline[1] + (-margin, height), outline[2] + (margin, height)]
        outline += [marks["waist_left"] + (margin, 0)]
        outline = [np.array([p[0], min(p[1], height)]) for p in outline]
    else:
        outline = [
            np.array([marks["shoulder_right"][0], 0.0]),
            marks["shoulder_right"],
            marks["armpit_right"] + (-margin, 0),
            np.array([marks["hem_right"][0] - margin, height]),
            np.array([marks["hem_left"][0] + margin, height]),
            marks["armpit_left"] + (margin, 0),
            marks["shoulder_left"],
            np.array([marks["shoulder_left"][0], 0.0]),
        ]
    cv2.fillPoly(torso, [np.round(np.array(outline)).astype(np.int32)], 1)
    if not any(part.alpha is None for part in parts):
        # No sleeve parts (short sleeves): the torso's spline lays the layout's own sleeves out too.
        torso |= cv2.dilate(layout.mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    torso_region = torso.astype(bool)
    regions = []
    for part in parts:
        if part.alpha is not None:
            regions.append(torso_region)
            continue
        regions.append(sleeve_band(part, size) & ~torso_region)
    return regions


def sleeve_band(part: Part, size: tuple[int, int]) -> np.ndarray:
    """HxW bool: the flat-lay around a sleeve part's axis. Its garment points are the warp's
    (services/warp/stage.py sleeve_part): per station along the sleeve, its two edges and its axis."""
    stations = part.garment.reshape(-1, 3, 2)
    root, cuff = stations[0, 1], stations[4, 1]  # axis points at 0 and 1 of the sleeve's length
    axis = cuff - root
    end = root + SLEEVE_REACH * axis
    half = SLEEVE_BAND * float(np.linalg.norm(stations[:, 0] - stations[:, 2], axis=1).max()) / 2
    band = np.zeros(size[::-1], np.uint8)
    cv2.line(band, tuple(np.round(root).astype(int)), tuple(np.round(end).astype(int)), 1, max(1, round(2 * half)))
    return band.astype(bool)


# --------------------------------------------------------------------------- mask and colours


def inside_outline(visible: np.ndarray) -> np.ndarray:
    """HxW bool: where a hidden pixel is still the garment: between the garment's visible pixels on
    its row, or where its mirror image across the layout's centre line is visible."""
    left = np.logical_or.accumulate(visible, axis=1)
    right = np.logical_or.accumulate(visible[:, ::-1], axis=1)[:, ::-1]
    return (left & right) | visible[:, ::-1]


def clean(mask: np.ndarray) -> np.ndarray:
    """The mask without specks (a small opening, then only parts at least MIN_PART of the largest)
    and with its holes filled."""
    size = max(3, round(0.006 * max(mask.shape)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    count, components, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, bool)
    keep[1:] = areas >= MIN_PART * areas.max()
    kept = keep[components].astype(np.uint8)
    # Holes: what the border's flood fill of the background does not reach.
    padded = np.pad(kept, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (kept | (1 - flood[1:-1, 1:-1])).astype(bool)


def regular_outline(laid: np.ndarray, layout: GarmentAnalysis) -> np.ndarray:
    """HxW bool: the flat-lay's outline from the garment as laid out (`laid`). The parse's edge,
    taken through the splines, is ragged and has gaps where arms hid the garment; a product shot's
    outline is smooth and symmetric, and close to the canonical layout. So: the layout, its hem
    moved to where the laid garment's is, and the laid garment's own outline (made symmetric and
    smooth) where it lies within NEAR_LAYOUT of that layout: a flared hem or a wide sleeve shows,
    trousers the parse took for the top's hem or hair at its collar do not. A lower garment's or
    a dress's outline is its own (made symmetric and smooth) within NEAR_LAYOUT of the layout, not
    joined to it: the layout's wide legs would put skinny jeans in flares, its A-line a sheath."""
    template = with_hem(layout, laid)
    # Worked at OUTLINE_WORK on the longer side (the outline is smooth at that scale), then scaled
    # back: at 768x1024 the blur and the dilation cost 50 ms at full size.
    height, width = laid.shape
    small = _at_most(laid.shape, OUTLINE_WORK)
    shrink = lambda m: cv2.resize(m.astype(np.float32), small, interpolation=cv2.INTER_AREA)  # noqa: E731
    laid_small = shrink(laid)
    sigma = OUTLINE_SMOOTH * max(small)
    size = 2 * int(3 * sigma) + 1
    symmetric = cv2.GaussianBlur(np.maximum(laid_small, laid_small[:, ::-1]), (size, size), sigma)
    reach = 2 * max(1, round(NEAR_LAYOUT * layout_box(small)[2])) + 1
    near = cv2.dilate(shrink(template), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
    beside = np.where(near > 0.0, symmetric, 0.0)
    laid_near = cv2.resize(beside, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    # Trousers and dresses vary too much for one layout (skinny jeans or flares, a sheath or an
    # A-line dress): theirs only bounds. A top's is what VITON's product shots were measured on.
    return clean(template | laid_near if layout.category == "upper" else laid_near)


def with_hem(layout: GarmentAnalysis, laid: np.ndarray) -> np.ndarray:
    """HxW bool: the layout's polygon with its hem points moved up or down to the laid garment's
    hem: the median of its lowest pixel over the columns the layout's hem spans (a top's, from one
    hem corner to the other; trousers', each leg's)."""
    marks = dict(layout.landmarks)
    hems = [name for name in marks if name.startswith("hem_")]
    xs = sorted(round(marks[name][0]) for name in hems)
    columns = np.hstack([laid[:, max(0, x0) : x1 + 1] for x0, x1 in zip(xs[::2], xs[1::2], strict=True)])
    shown = columns.any(axis=0)
    polygon = np.zeros(laid.shape, np.uint8)
    if shown.sum() >= 2:
        lowest = columns.shape[0] - 1 - np.argmax(columns[::-1], axis=0)
        shift = float(np.median(lowest[shown])) - float(np.mean([marks[name][1] for name in hems]))
        marks.update({name: (marks[name][0], marks[name][1] + shift) for name in hems})
    cv2.fillPoly(polygon, [np.round(np.array(list(marks.values()))).astype(np.int32)], 1)
    return polygon.astype(bool)


def looks_like_the_wearer(
    image: np.ndarray, parse: ParseResult, colours: np.ndarray, labels: np.ndarray, laid: np.ndarray, category: Category
) -> np.ndarray:
    """HxW bool on the flat-lay canvas: the laid garment's pixels that lie near a part of the wearer
    laid out with them (`labels`, the parse sampled onto the canvas: skin, hair, the other garment)
    and whose colour that part explains better than the garment's own colours do, by WEARER_MARGIN
    nats. The parse's edges take a V-neck's skin, strands of hair over the shoulders or the
    trousers' waistband for the garment; sampled as its colours, they leave patches of them in the
    flat-lay. Only near the part: a polo's black cuffs and pocket are as dark as the wearer's hair
    and trousers, but lie nowhere near them. A beige top keeps its colour: its own model explains
    it as well. What it mends is a fringe: a mistaken patch as large as a trim takes a cluster of
    the garment's own model, and keeps its colour as a trim does."""
    lab = lambda rgb: cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # noqa: E731  (as the parser)
    # The models are fitted on the photo, and the laid pixels judged, at most WEARER_WORK pixels on
    # the longer side: colours, not detail (at 768x1024 the full size cost 50 ms).
    fit_size = _at_most(image.shape[:2], WEARER_WORK)
    photo = lab(cv2.resize(image, fit_size, interpolation=cv2.INTER_AREA))
    photo_labels = cv2.resize(parse.labels, fit_size, interpolation=cv2.INTER_NEAREST)
    others = {"upper": GARMENT_LABELS["lower"], "lower": GARMENT_LABELS["upper"], "dress": ()}[category]
    parts = [part for part in (SKIN, (LIP["hair"],), others) if part]
    # The garment's colours from all of it: fitted only away from the other parts (where the
    # mistaken pixels are not), the model lost a sleeve's white stripes and a polo's black cuffs,
    # which lie near the arms and the hair, and they were filled.
    garment = colour.fit(photo[any_of(photo_labels, GARMENT_LABELS[category])], 4, GARMENT_MIN_STD)
    judge_size = _at_most(laid.shape, WEARER_WORK)
    small_laid = cv2.resize(laid.view(np.uint8), judge_size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if garment is None or not small_laid.any():
        return np.zeros(laid.shape, bool)
    canvas_labels = cv2.resize(labels, judge_size, interpolation=cv2.INTER_NEAREST)
    pixels = lab(cv2.resize(colours, judge_size, interpolation=cv2.INTER_AREA))
    reach = 2 * max(1, round(WEARER_REACH * max(judge_size))) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))
    wearer = np.zeros(small_laid.shape, np.uint8)
    for part in parts:
        model = colour.fit(photo[any_of(photo_labels, part)], 2, GARMENT_MIN_STD)
        if model is None:
            continue
        near = cv2.dilate(any_of(canvas_labels, part).view(np.uint8), disc).astype(bool) & small_laid
        candidates = pixels[near]
        wearer[near] |= model.nll(candidates) + WEARER_MARGIN < garment.nll(candidates)
    return cv2.resize(wearer, laid.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool) & laid


def _at_most(shape: tuple[int, ...], longest: int) -> tuple[int, int]:
    """(width, height): an image of `shape` (height, width, ...) scaled down to `longest` on its
    longer side (not up)."""
    height, width = shape[:2]
    scale = min(1.0, longest / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fill_colours(colours: np.ndarray, visible: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: the sampled colours where they are the garment's own (visible, inset from the
    parse's edge by EDGE_INSET), elsewhere in `mask` the mirror image's where that is known, and
    the rest pulled in from the known colours (push-pull). White outside the mask."""
    out = np.full((*mask.shape, 3), 255, np.uint8)
    inset = max(1, round(EDGE_INSET * max(mask.shape)))
    box = alpha_box(mask, (inset + 1, inset + 1))
    if box is None:
        return out
    # Worked in the mask's box, widened to be symmetric about the canvas's centre line so that
    # the box's mirror image is the canvas's.
    width = mask.shape[1]
    side = min(box[1].start, width - box[1].stop)
    box = (box[0], slice(side, width - side))
    visible, mask, colours = visible[box], mask[box], colours[box]
    known = cv2.erode(visible.astype(np.uint8), np.ones((2 * inset + 1,) * 2, np.uint8)).astype(bool)
    if not known.any():
        known = visible
    mirrored = known[:, ::-1] & ~known
    rgb = colours.copy()
    rgb[mirrored] = colours[:, ::-1][mirrored]
    source = known | mirrored
    # Filled at half the size (what is filled is smooth anyway); known colours stay at full size.
    half = (max(1, mask.shape[1] // 2), max(1, mask.shape[0] // 2))
    weight = source.astype(np.float32)
    small_weight = cv2.resize(weight, half, interpolation=cv2.INTER_AREA)
    premultiplied = cv2.bitwise_and(rgb, rgb, mask=source.view(np.uint8)).astype(np.float32)
    premultiplied = cv2.resize(premultiplied, half, interpolation=cv2.INTER_AREA)
    small = premultiplied / np.maximum(small_weight, 1e-6)[..., None]
    filled = np.clip(push_pull(small, small_weight > 0), 0, 255).round().astype(np.uint8)
    filled = cv2.resize(filled, mask.shape[::-1], interpolation=cv2.INTER_LINEAR)
    cv2.copyTo(rgb, source.view(np.uint8), filled)  # in place: the known colours over the filled
    cv2.copyTo(np.full_like(filled, 255), (~mask).view(np.uint8), filled)
    out[box] = filled
    return out


def push_pull(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`rgb` (HxWx3 float32) with the pixels outside `known` filled smoothly from the known ones:
    known colours are averaged down a pyramid (push) and the coarse averages brought back up where
    a level knows less (pull)."""
    weight = known.astype(np.float32)
    levels = [(rgb * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 2:
        colour, w = levels[-1]
        size = (max(1, w.shape[1] // 2), max(1, w.shape[0] // 2))
        levels.append(
            (cv2.resize(colour, size, interpolation=cv2.INTER_AREA), cv2.resize(w, size, interpolation=cv2.INTER_AREA))
        )
    colour, w = levels[-1]
    result = colour / np.maximum(w, 1e-6)[..., None]
    for colour, w in reversed(levels[:-1]):
        up = cv2.resize(result, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        mean = colour / np.maximum(w, 1e-6)[..., None]
        # w is the share of known pixels under each pixel of this level: trust it that much.
        result = w[..., None] * mean + (1.0 - w[..., None]) * up
    return result


# --------------------------------------------------------------------------- scoring


CANVAS = (192, 256)  # width, height: the common canvas flat-lays are scored on (VITON's size)
MARGIN = 8  # pixels of white around the garment's box on it
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # skimage's structural_similarity(gaussian_weights=True): truncate 3.5


def aligned(
    rgb: np.ndarray, mask: np.ndarray, canvas: tuple[int, int] = CANVAS, margin: int = MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """A flat-lay (HxWx3 uint8 and its HxW mask) cropped to its mask's box, scaled with its aspect
    kept to fit `canvas` (width, height) less `margin` on every side, centred, composited on white;
    and its mask there (the scaled mask >= 0.5). An empty mask gives a white canvas and no mask."""
    width, height = canvas
    out = np.full((height, width, 3), 255.0, np.float32)
    alpha = np.zeros((height, width), np.float32)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return out.astype(np.uint8), alpha >= 0.5
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    crop_rgb, crop_mask = rgb[box], mask[box].astype(np.float32)
    scale = min((width - 2 * margin) / crop_rgb.shape[1], (height - 2 * margin) / crop_rgb.shape[0])
    size = (max(1, round(crop_rgb.shape[1] * scale)), max(1, round(crop_rgb.shape[0] * scale)))
    small_rgb = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small_mask = cv2.resize(crop_mask, size, interpolation=cv2.INTER_AREA)
    x0, y0 = (width - size[0]) // 2, (height - size[1]) // 2
    region = (slice(y0, y0 + size[1]), slice(x0, x0 + size[0]))
    out[region] = small_rgb * small_mask[..., None] + out[region] * (1 - small_mask[..., None])
    alpha[region] = small_mask
    return out.round().astype(np.uint8), alpha >= 0.5


def grey_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two RGB uint8 images on grey (Rec. 601, as cv2.COLOR_RGB2GRAY), Gaussian window
    sigma 1.5, data range 255, the border of half a window left out: skimage's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False), which the
    benchmarks use, without skimage (a test dependency only)."""
    x, y = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64) for image in (a, b))
    size = 2 * SSIM_RADIUS + 1
    blur = lambda t: cv2.GaussianBlur(t, (size, size), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    r = SSIM_RADIUS
    return float(ssim[r:-r, r:-r].mean())


def scores(ours: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(mask IoU, grey SSIM) of two `aligned` flat-lays (canvas, mask) on the same white canvas."""
    (rgb_a, mask_a), (rgb_b, mask_b) = ours, truth
    iou = float((mask_a & mask_b).sum() / max(1, (mask_a | mask_b).sum()))
    return iou, grey_ssim(rgb_a, rgb_b)
