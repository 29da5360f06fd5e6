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
FLAT_BACKDROP_STD = 0.05  # Lab L spread of the border under which the backdrop is one retouched value
FLAT_BACKDROP_SHARE = 0.3  # ... and its flood's colour model's floor is this share of BACKGROUND_MIN_STD
BACKGROUND_COST = 9.0  # nll under the border model below which a pixel looks like background
EDGE_L = 100.0  # lightness step (Lab L, 3x3) that no flat background has: an outline
GAP_RADIUS = 0.008  # of the longer side: outline gaps narrower than twice this are closed
HOLE_COST = 1.0  # stricter, for enclosed regions to count as holes
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
    # A retouched backdrop of one exact value tells a white garment apart by an L unit or two:
    # there, what the background's flood may cross is judged by a tighter model (a noisy
    # backdrop needs the floor, or its own noise would read as garment). The looser one still
    # takes back the outline's JPEG fringe, within the r pixels the flood gives back.
    flat = border[near_median, 0].std() < FLAT_BACKDROP_STD
    flood_cost = _background_cost(lab, border[near_median], BACKGROUND_MIN_STD * FLAT_BACKDROP_SHARE) if flat else cost

    # Background is border-coloured and flat. A white garment on white is separated from the
    # background only by its faint outline, which has gaps: the opening closes gaps narrower
    # than 2 * r before connectivity is tested, and the dilation gives the r pixels back.
    gradient = cv2.morphologyEx(lab[..., 0], cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    background_like = ((cost < BACKGROUND_COST) & (gradient < EDGE_L)).astype(np.uint8)
    floodable = ((flood_cost < BACKGROUND_COST) & (gradient < EDGE_L)).astype(np.uint8)
    r = max(1, round(GAP_RADIUS * max(lab.shape[:2])))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    opened = cv2.morphologyEx(floodable, cv2.MORPH_OPEN, disc)
    _, parts = cv2.connectedComponents(opened, connectivity=4)
    outside = np.unique(parts[frame & (opened > 0)])
    background = np.isin(parts, outside[outside > 0]).astype(np.uint8)
    background = (cv2.dilate(background, disc) > 0) & (background_like > 0)
    # JPEG ringing leaves a ragged fringe of not-quite-background along the outline: smooth it off.
    garment = cv2.morphologyEx((~background).astype(np.uint8), cv2.MORPH_OPEN, disc) > 0
    garment = _clean(garment)
    # Real holes: enclosed, tightly border-coloured, not tiny. Everything else enclosed is garment.
    holes = garment & (flood_cost < HOLE_COST)
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
