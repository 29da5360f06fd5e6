"""Garment segmentation: cut the garment out of a product image.

Product images are a garment on a plain studio background (white, light grey, a soft gradient
or a fine texture) or a cut-out with alpha. The background is what the image border looks like:

1. A colour model of the border (its dominant colours; a garment touching the border is a
   minority there and is left out).
2. Background is every pixel that looks like the border *and* is connected to it; a smooth
   gradient is followed because connectivity is tested on a cost threshold, not on one colour.
3. Enclosed border-coloured regions are real holes (a keyhole neckline, the gap between straps)
   only when they match the border tightly and are not tiny; anything else inside the
   garment's outline (a white print on a white shirt) stays garment.

An image that is not a product shot (a photo, noise, a blank page) has no uniform border or no
object on it, and gets GarmentNotDetected.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.errors import GarmentNotDetected
from services.parser import colour

WORK_SIDE = 512  # segmentation runs with the longer side at most this
BORDER = 3  # pixels of the frame sampled as background
BORDER_OUTLIER = 12.0  # Lab distance from the border's median beyond which a border pixel is garment
BACKGROUND_MIN_STD = np.array([0.5, 0.3, 0.3])
# A backdrop retouched to one exact value: at least FLAT_BACKDROP_SHARE of the border's pixels
# lie within FLAT_BACKDROP_L of its median lightness (a photographed backdrop's noise leaves a
# tenth or so there). A spread (std) would not do: the few pixels JPEG ringing leaves off-value
# where a garment comes near the frame raise it over any threshold a noisy backdrop stays under.
FLAT_BACKDROP_L = 0.05
FLAT_BACKDROP_SHARE = 0.5
FLAT_FLOOD_STD = 0.3  # there, the tight flood's colour model's floor: this share of BACKGROUND_MIN_STD
HALO = 3  # in gap radii: what only the loose flood took, nowhere thicker than this, is the JPEG halo
BACKGROUND_COST = 9.0  # nll under the border model below which a pixel looks like background
EDGE_L = 100.0  # lightness step (Lab L, 3x3) that no flat background has: an outline
GAP_RADIUS = 0.008  # of the longer side: outline gaps narrower than twice this are closed
HOLE_COST = 1.0  # stricter, for enclosed regions to count as holes (under the tight model on a flat backdrop)
MIN_HOLE = 0.002  # of the garment's area
MIN_UNIFORM_BORDER = 0.55  # a product shot's border is mostly background
MIN_AREA, MAX_AREA = 0.03, 0.97  # of the image
MIN_PART = 0.05  # pieces smaller than this fraction of the largest are specks
ALPHA_CUTOUT = 0.01  # an alpha channel with at least this much transparency is the mask


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _frame(shape: tuple[int, int]) -> np.ndarray:
    frame = np.ones(shape, bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return frame


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drop specks: keep the pieces at least MIN_PART of the largest."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, bool)
    keep[1:] = areas >= MIN_PART * areas.max()
    return keep[parts]


def _background_cost(lab: np.ndarray, border: np.ndarray, min_std: np.ndarray) -> np.ndarray:
    """HxW: each pixel's nll under a colour model of the `border` pixels (spread floored at
    `min_std`), less the border's own median: 0 is as typical as the border itself."""
    model = colour.fit(border, 3, min_std)
    if model is None:
        raise GarmentNotDetected("image too small to find a garment in")
    cost = model.nll(lab.reshape(-1, 3)).reshape(lab.shape[:2])
    return cost - np.median(model.nll(border))


def _flood(floodable: np.ndarray, background_like: np.ndarray, frame: np.ndarray, disc: np.ndarray) -> np.ndarray:
    """The `floodable` pixels connected to the frame once gaps narrower than `disc` are closed
    (the opening), and the `background_like` pixels within `disc` of them (the opening's
    pixels given back)."""
    opened = cv2.morphologyEx(floodable.astype(np.uint8), cv2.MORPH_OPEN, disc)
    _, parts = cv2.connectedComponents(opened, connectivity=4)
    outside = np.unique(parts[frame & (opened > 0)])
    background = np.isin(parts, outside[outside > 0]).astype(np.uint8)
    return (cv2.dilate(background, disc) > 0) & background_like


def _mask_from_background(rgb: np.ndarray) -> np.ndarray:
    lab = _lab(cv2.medianBlur(rgb, 5))
    frame = _frame(lab.shape[:2])
    border = lab[frame]
    near_median = np.linalg.norm(border - np.median(border, axis=0), axis=1) < BORDER_OUTLIER
    if near_median.mean() < MIN_UNIFORM_BORDER:
        raise GarmentNotDetected("the image border is not a plain background: not a product image")
    cost = _background_cost(lab, border[near_median], BACKGROUND_MIN_STD)
    if (cost[frame] < BACKGROUND_COST).mean() < MIN_UNIFORM_BORDER:
        raise GarmentNotDetected("the image border is not a plain background: not a product image")
    # Background is border-coloured and flat. A white garment on white is separated from the
    # background only by its faint outline, which has gaps: the flood closes gaps narrower than
    # 2 * r (`_flood`).
    gradient = cv2.morphologyEx(lab[..., 0], cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    background_like = (cost < BACKGROUND_COST) & (gradient < EDGE_L)
    r = max(1, round(GAP_RADIUS * max(lab.shape[:2])))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    background = _flood(background_like, background_like, frame, disc)
    hole_cost = cost
    lightness = border[near_median, 0]
    if (np.abs(lightness - np.median(lightness)) < FLAT_BACKDROP_L).mean() >= FLAT_BACKDROP_SHARE:
        # A backdrop retouched to one exact value: a white garment differs from it by an L unit
        # or two, and the flood above (its colour model floored for a noisy backdrop) crosses
        # its faint outline into it. A flood under a tight model stops at the garment, but also
        # at the JPEG halo around every garment. What only the loose flood took is given back
        # in each piece that is somewhere thicker than a halo: the white garment's body, not the
        # halo's thin band.
        tight_cost = _background_cost(lab, border[near_median], BACKGROUND_MIN_STD * FLAT_FLOOD_STD)
        tight = _flood((tight_cost < BACKGROUND_COST) & (gradient < EDGE_L), background_like, frame, disc)
        taken = (background & ~tight).astype(np.uint8)
        thick = cv2.distanceTransform(taken, cv2.DIST_L2, 3) > HALO * r
        _, parts = cv2.connectedComponents(taken, connectivity=8)
        # A piece on the frame is backdrop the tight flood could not reach through a gap the halo
        # narrowed (the backdrop between a racerback's straps).
        white_garment = np.setdiff1d(np.unique(parts[thick]), np.unique(parts[frame]))
        background &= ~np.isin(parts, white_garment)
        hole_cost = tight_cost
    # JPEG ringing leaves a ragged fringe of not-quite-background along the outline: smooth it off.
    garment = cv2.morphologyEx((~background).astype(np.uint8), cv2.MORPH_OPEN, disc) > 0
    garment = _clean(garment)
    # Real holes: enclosed, tightly border-coloured, not tiny. Everything else enclosed is garment.
    holes = garment & (hole_cost < HOLE_COST)
    count, hole_parts, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    big = np.zeros(count, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_HOLE * garment.sum()
    return garment & ~big[hole_parts]


def is_cutout(image: np.ndarray) -> bool:
    """An RGBA image whose transparency is the background: its alpha is the garment's mask."""
    return image.shape[2] == 4 and (image[..., 3] < 128).mean() >= ALPHA_CUTOUT


def garment_mask(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bool garment masks of an RGB or RGBA uint8 product image: at full resolution, and at
    the working resolution (longer side at most WORK_SIDE) where shape analysis runs."""
    height, width = image.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    if min(size) < 2 * BORDER + 8:
        raise GarmentNotDetected(f"image of {width}x{height} is too small to find a garment in")
    mask = _clean(small[..., 3] >= 128) if is_cutout(small) else _mask_from_background(small[..., :3])
    area = mask.mean()
    if not MIN_AREA <= area <= MAX_AREA:
        what = "nothing stands out from the background" if area < MIN_AREA else "no background around the garment"
        raise GarmentNotDetected(f"no garment found: {what}")
    if scale == 1:
        return mask, mask
    # Back to full size along smooth edges.
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return soft >= 0.5, mask
