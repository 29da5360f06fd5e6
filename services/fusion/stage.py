"""The fusion stage: person photo + parse + pose + warped garment -> the try-on photo.

This file decides *where* (the region maps, from the parse and the pose); the tryon_fusion
model (services/fusion/model.py) does the per-pixel work.

- repaint: the old garment (and its fringe) inside the agnostic region: it must go. Skin and
  backdrop in the agnostic region stay as they are unless the new garment covers them.
- garment allowed: the agnostic region. What is in front of the new garment inside it (bare
  arms over its torso, hair) the warp has already taken out of the garment's alpha, and a
  sleeve longer than the old one covers its arm.
- body: where an uncovered pixel of the repaint region is skin (the torso between the
  shoulder and hip joints, the arms' and, for bottoms, the legs' capsules); elsewhere it
  was old garment standing off the body and becomes background.
- lower body (tops only): below the waist, across the hips and down the legs, an uncovered
  pixel is the lower garment the old top hung over: a shorter top shows the trousers or
  skirt, not a band of belly skin or backdrop in front of the thighs. Without a lower garment
  in the photo (a dress, a crop at the waist) it stays skin or background.
- skin, background and lower-garment sources: the photo's own skin (neck, arms, legs; the
  face only when there is little else), backdrop and trousers or skirt, outside the repaint
  region.
- shading source: the old garment, for its low-frequency lighting only.
- shading albedo: under the old garment, the mean luma of each pixel's dye (its chroma
  cluster), so that the light is told from the print: a red top's white stripes or a logo of
  another colour do not read as highlights. Clustered by chroma alone, so that a plain
  garment's lit and shaded sides stay one dye.
The person's old garment is never copied: it only says what to repaint and, blurred by at
least LIGHTING_SIGMA of the height, how the new garment is lit.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch

from services.common.contracts import LIP, Category, ParseResult, PoseResult, WarpResult
from services.common.errors import ModelUnavailable
from services.common.inference import Infer
from services.fusion.model import LIGHTING_SIGMA, REGIONS
from services.fusion.model import NAME as MODEL_NAME
from services.fusion.tom import compose
from services.learned import tryon_model, unavailable
from services.parser import colour
from services.parser.agnostic import OLD_GARMENT, agnostic_mask, any_of
from services.parser.geometry import ARM_TAPER, BodyFrame, arm_chain, arm_seen, landmark, leg_chain, torso_corners
from services.warp.gmm import alpha_box, pooled, premultiply, work_size

TORSO_GROWTH = 0.12  # of the shoulder width: the torso's skin reaches this far past the joints
SHOULDER_RISE = 0.35  # of the shoulder width: how far above the shoulder joints' line the shoulders' top may reach
LEG_RADIUS = 0.2  # of the shoulder width
# A bare leg's half-width at the hip, the knee and the ankle, of the shoulder width: a thigh is
# wide, a calf is not (with LEG_RADIUS all the way down, the gap between the calves that a long
# old skirt hid was filled with skin under a short new garment).
LEG_TAPER = (0.2, 0.12, 0.08)
BACKGROUND_EROSION = 0.01  # of the height: backdrop pixels this close to the person are not sampled
FRINGE = 0.003  # of the height: the old garment's edge pixels mix in what is next to it
MIN_BODY_SKIN = 0.002  # of the image: with fewer bare-skin pixels than this, the face lends its tone
WAIST_T = 0.85  # body-frame t: below this, what a top leaves uncovered is the lower garment
EDITABLE_GROWTH = 0.01  # of the height: the generator may also touch this band around what fusion changed
DYES = 3  # colour clusters of the old garment, at most
CHROMA_SAME = 12.0  # Lab a-b distance under which two clusters are one dye (light shifts chroma a little)
CHROMA_MIN_STD = np.array([1.0, 3.0, 3.0])  # Lab spread floors; L is zeroed, its floor only keeps the fit finite
ALBEDO_SCALE = 4  # the dye map is worked out at this fraction of the resolution
MIN_LOWER_GARMENT = 0.002  # of the image: with fewer lower-garment pixels than this, no lower fill

BODY_SKIN = (LIP["torso_skin"], LIP["left_arm"], LIP["right_arm"], LIP["left_leg"], LIP["right_leg"])
LOWER_GARMENT = (LIP["pants"], LIP["skirt"])


def body_region(pose: PoseResult, shape: tuple[int, int], category: Category) -> np.ndarray:
    """HxW bool: where the body's own skin would show if the garment were not there."""
    pts = pose.landmark_array()[:, :2].astype(np.float64)
    frame = BodyFrame.from_points(pts)
    sw = frame.shoulder_width
    body = np.zeros(shape, np.uint8)
    quad = torso_corners(pts)
    centre = quad.mean(axis=0)
    grown = (
        centre
        + (quad - centre) * (1.0 + TORSO_GROWTH * sw / np.maximum(np.linalg.norm(quad - centre, axis=1), 1.0))[:, None]
    )
    cv2.fillPoly(body, [np.round(grown).astype(np.int32)], 1)
    # The neck, up to the chin: a capsule from the shoulder midpoint towards the nose.
    neck_top = frame.origin + (landmark(pts, "nose") - frame.origin) * 0.6
    cv2.line(body, _px(frame.origin), _px(neck_top), 1, max(1, round(0.35 * sw)))
    # The shoulders' top, from the neck out past the joints: a garment rests on it, so there the
    # person's silhouette is the body. Past the torso's corners and the neck, a turned woman's far
    # shoulder was taken for backdrop where a new top did not reach it: a grey wedge by her neck.
    half = (0.5 + TORSO_GROWTH) * sw * frame.normal
    rise = SHOULDER_RISE * sw * frame.axis
    shoulders = np.zeros(shape, np.uint8)
    cv2.fillPoly(
        shoulders,
        [
            np.round(
                [frame.origin + half, frame.origin - half, frame.origin - half - rise, frame.origin + half - rise]
            ).astype(np.int32)
        ],
        1,
    )
    body |= shoulders & (pose.mask > 0.5)
    limbs = _arms(pts)
    if category in ("lower", "dress"):
        limbs += [(leg_chain(pts, s)[:3], LEG_TAPER) for s in ("left", "right")]
    for chain, radii in limbs:
        _draw_limb(body, chain, [r * sw for r in radii])
    return body.astype(bool)


def _arms(pts: np.ndarray) -> list[tuple[list[np.ndarray], tuple[float, ...]]]:
    """Each arm's chain and its radii (of the shoulder width), down past the fingers: an old cuff
    over the back of the hand is skin too."""
    return [(arm_chain(pts, side), (*ARM_TAPER, ARM_TAPER[-1])) for side in ("left", "right")]


def _draw_limb(canvas: np.ndarray, chain: list[np.ndarray], radii: list[float], value: int = 1) -> None:
    """Fill a limb into `canvas` with `value`: along each bone of `chain` a band from one joint's
    radius to the next's (a tapered capsule), with a disc at every joint."""
    for (a, ra), (b, rb) in itertools.pairwise(zip(chain, radii, strict=True)):
        direction = b - a
        normal = np.array([-direction[1], direction[0]]) / max(float(np.linalg.norm(direction)), 1.0)
        band = [a + normal * ra, b + normal * rb, b - normal * rb, a - normal * ra]
        cv2.fillPoly(canvas, [np.round(band).astype(np.int32)], value)
    for joint, radius in zip(chain, radii, strict=True):
        cv2.circle(canvas, _px(joint), max(1, round(radius)), value, -1)


def lower_body_region(pose: PoseResult, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool: below the waist, the hips' width (grown as the torso's) and the legs' capsules:
    where a lower garment would show under a top shorter than the old one."""
    pts = pose.landmark_array()[:, :2].astype(np.float64)
    frame = BodyFrame.from_points(pts)
    sw = frame.shoulder_width
    region = np.zeros(shape, np.uint8)
    hips = [landmark(pts, f"{side}_hip") for side in ("left", "right")]
    hip_half_width = float(np.linalg.norm(hips[0] - hips[1])) / 2 + TORSO_GROWTH * sw
    # A band of the hips' width down the body axis from the waist line to past the image's
    # bottom, and the legs; then everything above the waist line is cleared (the legs' round caps
    # at the hips reach over it). Polygons, not a per-pixel test: this runs on every try-on.
    far = 5 * (frame.length + shape[0] + shape[1])
    waist = frame.origin + frame.axis * WAIST_T * frame.length
    band = [waist + s * frame.normal * hip_half_width for s in (1, -1)]
    down = frame.axis * far
    cv2.fillPoly(region, [np.round([band[0], band[1], band[1] + down, band[0] + down]).astype(np.int32)], 1)
    for side in ("left", "right"):
        for a, b in itertools.pairwise(leg_chain(pts, side)[:3]):
            cv2.line(region, _px(a), _px(b), 1, max(1, round(2 * LEG_RADIUS * sw)))
    side = frame.normal * far
    above = [waist + side, waist - side, waist - side - down, waist + side - down]
    cv2.fillPoly(region, [np.round(above).astype(np.int32)], 0)
    # An arm the pose sees hanging in front of the hips is in front of the lower garment: where a
    # shorter top leaves it, it is the arm's skin (an old long sleeve there became trousers).
    visibility = pose.landmark_array()[:, 3]
    for side, (chain, radii) in zip(("left", "right"), _arms(pts), strict=True):
        if arm_seen(visibility, side):
            _draw_limb(region, chain, [r * sw for r in radii], 0)
    return region.astype(bool)


def _px(point: np.ndarray) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


def garment_albedo(image: np.ndarray, source: np.ndarray) -> np.ndarray:
    """HxW float32: inside `source` (the old garment) the mean luma (0 to 1) of the dye each pixel
    has, 1 elsewhere. Dyes are chroma clusters (Lab a, b) of the garment, those closer than
    CHROMA_SAME merged; worked out at 1/ALBEDO_SCALE of the resolution (the light is blurred far
    more than that)."""
    height, width = source.shape
    size = (max(1, width // ALBEDO_SCALE), max(1, height // ALBEDO_SCALE))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    inside = cv2.resize(source.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    albedo = np.ones(inside.shape, np.float32)
    chroma = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)[inside]
    chroma[:, 0] = 0.0  # lightness is the light's as much as the dye's
    model = colour.fit(chroma, DYES, CHROMA_MIN_STD)
    if model is not None:
        dye = model.assign(chroma)
        same = np.linalg.norm(model.means[:, None, 1:] - model.means[None, :, 1:], axis=2) < CHROMA_SAME
        dye = same.argmax(axis=1)[dye]  # each dye joins the first one of nearly its chroma
        luma = small[inside] @ np.array([0.299, 0.587, 0.114], np.float32)
        means = np.bincount(dye, luma, minlength=len(same)) / np.maximum(np.bincount(dye, minlength=len(same)), 1)
        albedo[inside] = means[dye]
    return cv2.resize(albedo, (width, height), interpolation=cv2.INTER_NEAREST)


def regions(image: np.ndarray, parse: ParseResult, pose: PoseResult, category: Category) -> np.ndarray:
    """(len(REGIONS), H, W) float32 region maps of the photo `image`, in the order the model reads them."""
    labels = parse.labels
    height = labels.shape[0]
    agnostic = parse.agnostic if parse.agnostic is not None and parse.category == category else None
    if agnostic is None:
        agnostic = agnostic_mask(labels, pose, category)
    # Only the old garment must go; the agnostic region's skin and backdrop stay as they are
    # unless the new garment covers them. A pixel or two more takes the old garment's fringe.
    old_garment = any_of(labels, OLD_GARMENT[category])
    fringe = max(1, round(FRINGE * height))
    repaint = agnostic & cv2.dilate(old_garment.astype(np.uint8), np.ones((2 * fringe + 1,) * 2, np.uint8)).astype(bool)
    skin = any_of(labels, BODY_SKIN) & ~repaint
    if skin.sum() < MIN_BODY_SKIN * labels.size:
        skin |= labels == LIP["face"]
    erosion = max(1, round(BACKGROUND_EROSION * height))
    background = cv2.erode((labels == LIP["background"]).astype(np.uint8), np.ones((2 * erosion + 1,) * 2, np.uint8))
    lower = any_of(labels, LOWER_GARMENT) & ~repaint if category == "upper" else np.zeros_like(repaint)
    has_lower = lower.sum() >= MIN_LOWER_GARMENT * labels.size
    shading_source = old_garment & repaint
    maps = {
        "repaint": repaint,
        "body": body_region(pose, labels.shape, category),
        "lower_body": lower_body_region(pose, labels.shape) if has_lower else np.zeros_like(repaint),
        "skin_source": skin,
        "background_source": background.astype(bool) & ~repaint,
        "lower_source": lower,
        "shading_source": shading_source,
        "garment_allowed": agnostic,
        "shading_albedo": garment_albedo(image, shading_source),
    }
    return np.stack([maps[name] for name in REGIONS]).astype(np.float32)


def editable_region(region_maps: np.ndarray, garment_alpha: np.ndarray) -> np.ndarray:
    """HxW bool: where the learned generator may change the fused photo: the repaint region and the new
    garment (its HxW alpha) where it shows, and a thin band around them for their seams. Worked
    out inside the box those can reach (a garment covers about a third of a photo)."""
    repaint = region_maps[REGIONS.index("repaint")]
    allowed = region_maps[REGIONS.index("garment_allowed")]
    editable = np.zeros(repaint.shape, bool)
    grow = max(1, round(EDITABLE_GROWTH * repaint.shape[0]))
    box = alpha_box(np.maximum(repaint, garment_alpha), (grow, grow))
    if box is None:
        return editable
    changed = (repaint[box] > 0) | (garment_alpha[box] * allowed[box] > 0.01)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    editable[box] = cv2.dilate(changed.astype(np.uint8), kernel).astype(bool)
    return editable


def run(
    image: np.ndarray,
    parse: ParseResult,
    pose: PoseResult,
    warped: WarpResult,
    infer: Infer,
    learned: str | None = None,
) -> np.ndarray:
    """The try-on photo: HxWx3 uint8 at the person photo's resolution. With `learned` (the name of
    installed weights), `warped` is the learned warp: tryon_fusion lays it in and the learned
    tryon_generator (services/fusion/tom.py) renders over the result, as it was trained
    (services/train.py `over_learned_warp`)."""
    height = image.shape[0]
    region_maps = regions(image, parse, pose, warped.category)
    fused = infer(
        MODEL_NAME,
        {
            "image__0": (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None],
            "garment__1": np.ascontiguousarray(warped.rgba.transpose(2, 0, 1)[None], dtype=np.float32),
            "regions__2": region_maps[None],
            "lighting_sigma__3": np.array([[LIGHTING_SIGMA * height]], np.float32),
        },
    )["tryon__0"]
    if learned:
        editable = editable_region(region_maps, warped.rgba[..., 3])
        fused = learned_tryon(fused, warped.rgba, editable, infer, learned)
    # To HxWx3 uint8 through torch: numpy's strided passes over the planes took 5 ms of a try-on.
    photo = torch.from_numpy(fused[0]).mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    return photo.permute(1, 2, 0).contiguous().numpy()


def learned_tryon(
    fused: np.ndarray, garment: np.ndarray, editable: np.ndarray, infer: Infer, weights: str
) -> np.ndarray:
    """tryon_generator-`weights` (services/fusion/tom.py) over the fused photo ((1, 3, H, W)):
    the network sees its inputs pooled to the work size; its layers are scaled up and composed
    only inside the editable region's box (outside it the answer is the fused photo)."""
    height, width = editable.shape
    size = work_size(height, width)
    inputs = {
        "fused__0": np.concatenate([pooled(plane, size) for plane in fused[0]], axis=1),
        "garment__1": pooled(premultiply(garment), size, alpha_box(garment[..., 3])),
        "editable__2": pooled(editable.astype(np.float32), size),
    }
    try:
        layers = infer(tryon_model(weights), inputs)["layers__0"][0]
    except ModelUnavailable as exc:
        raise unavailable(exc, weights) from exc
    box = alpha_box(editable)
    if box is None:
        return fused
    layers = cv2.resize(layers.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)[box]
    # Contiguous planes first: torch's arithmetic over strided (HWC-permuted) views took twice as long.
    as_nchw = lambda hwc: torch.from_numpy(hwc).permute(2, 0, 1)[None].contiguous()  # noqa: E731
    composed, _ = compose(
        torch.from_numpy(fused[:, :, box[0], box[1]]).contiguous(),
        as_nchw(garment[box]),
        torch.from_numpy(editable[box].astype(np.float32))[None, None],
        as_nchw(layers),
    )
    out = fused.copy()
    out[:, :, box[0], box[1]] = composed.numpy()
    return out
