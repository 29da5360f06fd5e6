"""Product images drawn by the tests: garments of known shape and landmarks on a studio backdrop."""

from __future__ import annotations

import cv2
import numpy as np

# A T-shirt, 600x600, sleeves held out: its outline counter-clockwise on screen from the neckline.
TEE = {
    "neckline": (300, 100),
    "collar_right": (250, 60),
    "shoulder_right": (170, 90),
    "sleeve_right_outer": (80, 200),
    "sleeve_right_inner": (130, 250),
    "armpit_right": (190, 200),
    "hem_right": (190, 520),
    "hem_left": (410, 520),
    "armpit_left": (410, 200),
    "sleeve_left_inner": (470, 250),
    "sleeve_left_outer": (520, 200),
    "shoulder_left": (430, 90),
    "collar_left": (350, 60),
}
TROUSERS = {
    "waist_right": (200, 50),
    "hem_right_outer": (170, 560),
    "hem_right_inner": (280, 560),
    "crotch": (300, 250),
    "hem_left_inner": (320, 560),
    "hem_left_outer": (430, 560),
    "waist_left": (400, 50),
}
DRESS = {
    "neckline": (300, 90),
    "collar_right": (260, 40),
    "shoulder_right": (215, 45),
    "armpit_right": (245, 190),
    "hem_right": (150, 700),
    "hem_left": (450, 700),
    "armpit_left": (355, 190),
    "shoulder_left": (385, 45),
    "collar_left": (340, 40),
}

# A catalogue's kinds of garment, drawn as outlines (polygons, counter-clockwise on screen), each
# with its canvas (width, height) and its category: for category detection.
TANK_TOP = {
    "neckline": (300, 150),
    "strap_r_in": (255, 60),
    "strap_r_out": (220, 60),
    "armhole_r": (180, 190),
    "hem_r": (165, 480),
    "hem_l": (435, 480),
    "armhole_l": (420, 190),
    "strap_l_out": (380, 60),
    "strap_l_in": (345, 60),
}
# A tank top whose armholes curve in below the straps, as real ones do (TANK_TOP's run straight).
SCOOPED_TANK = {
    "neckline": (300, 150),
    "strap_r_in": (255, 60),
    "strap_r_out": (225, 60),
    "armhole_r_curve": (222, 150),
    "armhole_r": (175, 200),
    "hem_r": (170, 480),
    "hem_l": (430, 480),
    "armhole_l": (425, 200),
    "armhole_l_curve": (378, 150),
    "strap_l_out": (375, 60),
    "strap_l_in": (345, 60),
}
# Long sleeves laid down against the body, cuffs beside the hem: the outline has no armpit.
LAID_SLEEVES = {
    "neckline": (300, 100),
    "collar_right": (250, 60),
    "shoulder_right": (170, 90),
    "cuff_right_outer": (120, 500),
    "cuff_right_inner": (170, 510),
    "hem_right": (190, 520),
    "hem_left": (410, 520),
    "cuff_left_inner": (430, 510),
    "cuff_left_outer": (480, 500),
    "shoulder_left": (430, 90),
    "collar_left": (350, 60),
}


Outline = dict[str, tuple[int, int]]


def inserted(outline: Outline, after: str, points: Outline) -> Outline:
    """`outline` with `points` inserted after the point `after` (the outline's order is its shape)."""
    items = list(outline.items())
    at = [name for name, _ in items].index(after) + 1
    return dict(items[:at] + list(points.items()) + items[at:])


# A fitted tee: its sides curve in to a waist and out to a wider hem, so that the dent under each
# sleeve is deepest at the waist, not at the armpit.
FITTED_TEE = inserted(
    inserted({**TEE, "hem_right": (120, 520), "hem_left": (480, 520)}, "armpit_right", {"waist_right": (220, 340)}),
    "hem_left",
    {"waist_left": (380, 340)},
)
# LAID_SLEEVES with each sleeve apart from the body for its last stretch: a slit from the cuff up
# to well below where the (hidden) armpit is.
SLIT_LAID_SLEEVES = {
    "neckline": (300, 100),
    "collar_right": (250, 60),
    "shoulder_right": (170, 90),
    "cuff_right_outer": (120, 500),
    "cuff_right_inner": (160, 510),
    "slit_right": (182, 380),
    "hem_right": (195, 520),
    "hem_left": (405, 520),
    "slit_left": (418, 380),
    "cuff_left_inner": (440, 510),
    "cuff_left_outer": (480, 500),
    "shoulder_left": (430, 90),
    "collar_left": (350, 60),
}
LONG_SLEEVE = {
    **TEE,
    "sleeve_right_outer": (60, 470),
    "sleeve_right_inner": (115, 480),
    "sleeve_left_inner": (485, 480),
    "sleeve_left_outer": (540, 470),
}
# Open at the front: a deep V to the waist and the hem's two fronts apart at the bottom, which
# makes a dent at the hem's centre (what a crotch looks like to an outline).
CARDIGAN = {
    "neck": (300, 300),
    "collar_right": (250, 60),
    "shoulder_right": (170, 90),
    "sleeve_right_outer": (60, 470),
    "sleeve_right_inner": (115, 480),
    "armpit_right": (185, 200),
    "hem_right": (185, 540),
    "front_right": (292, 540),
    "split": (300, 490),
    "front_left": (308, 540),
    "hem_left": (415, 540),
    "armpit_left": (415, 200),
    "sleeve_left_inner": (485, 480),
    "sleeve_left_outer": (540, 470),
    "shoulder_left": (430, 90),
    "collar_left": (350, 60),
}
# Off the shoulders, its top edge straight like a waistband, the long sleeves hanging apart from a
# shorter body: the dent between the sleeves' cuffs is as deep as a crotch, but wide open.
OFF_SHOULDER_TOP = {
    "top_right": (110, 100),
    "sleeve_right_outer": (70, 500),
    "sleeve_right_inner": (150, 500),
    "armpit_right": (190, 320),
    "hem_right": (195, 330),
    "hem_centre": (300, 300),
    "hem_left": (405, 330),
    "armpit_left": (410, 320),
    "sleeve_left_inner": (450, 500),
    "sleeve_left_outer": (530, 500),
    "top_left": (490, 100),
}
JEANS = {
    "waist_right": (215, 30),
    "hem_right_outer": (195, 580),
    "hem_right_inner": (285, 580),
    "crotch": (300, 210),
    "hem_left_inner": (315, 580),
    "hem_left_outer": (405, 580),
    "waist_left": (385, 30),
}
SHORTS = {
    "waist_right": (170, 120),
    "hem_right_outer": (140, 400),
    "hem_right_inner": (290, 400),
    "crotch": (300, 290),
    "hem_left_inner": (310, 400),
    "hem_left_outer": (460, 400),
    "waist_left": (430, 120),
}
MINI_SKIRT = {"waist_right": (195, 150), "hem_right": (150, 400), "hem_left": (450, 400), "waist_left": (405, 150)}
MIDI_SKIRT = {
    "waist_right": (225, 40),
    "hip_right": (200, 150),
    "hem_right": (110, 570),
    "hem_left": (490, 570),
    "hip_left": (400, 150),
    "waist_left": (375, 40),
}
LONG_DRESS = {
    "neckline": (300, 100),
    "collar_right": (255, 40),
    "shoulder_right": (205, 50),
    "armpit_right": (220, 190),
    "waist_right": (225, 330),
    "hem_right": (150, 880),
    "hem_left": (450, 880),
    "waist_left": (375, 330),
    "armpit_left": (380, 190),
    "shoulder_left": (395, 50),
    "collar_left": (345, 40),
}
SHORT_DRESS = {
    "neckline": (300, 100),
    "collar_right": (255, 40),
    "shoulder_right": (205, 50),
    "armpit_right": (220, 190),
    "waist_right": (225, 330),
    "hem_right": (160, 640),
    "hem_left": (440, 640),
    "waist_left": (375, 330),
    "armpit_left": (380, 190),
    "shoulder_left": (395, 50),
    "collar_left": (345, 40),
}
# Straight and sleeveless, as long for its width as the longest tops: what `auto` cannot tell.
SHEATH_DRESS = {
    "neckline": (300, 110),
    "collar_right": (260, 40),
    "shoulder_right": (220, 45),
    "armpit_right": (178, 170),
    "hem_right": (175, 560),
    "hem_left": (425, 560),
    "armpit_left": (422, 170),
    "shoulder_left": (380, 45),
    "collar_left": (340, 40),
}
CATALOGUE: dict[str, tuple[dict[str, tuple[int, int]], tuple[int, int], str]] = {
    "tee": (TEE, (600, 600), "upper"),
    "tank top": (TANK_TOP, (600, 600), "upper"),
    "long sleeves": (LONG_SLEEVE, (600, 600), "upper"),
    "cardigan": (CARDIGAN, (600, 600), "upper"),
    "off-shoulder top": (OFF_SHOULDER_TOP, (600, 600), "upper"),
    "trousers": (TROUSERS, (600, 600), "lower"),
    "jeans": (JEANS, (600, 620), "lower"),
    "shorts": (SHORTS, (600, 520), "lower"),
    "mini skirt": (MINI_SKIRT, (600, 520), "lower"),
    "midi skirt": (MIDI_SKIRT, (600, 620), "lower"),
    "short dress": (SHORT_DRESS, (600, 700), "dress"),
    "long dress": (LONG_DRESS, (600, 940), "dress"),
}


def product_image(outline: dict[str, tuple[int, int]], size: tuple[int, int] = (600, 600), seed: int = 0) -> np.ndarray:
    """The garment (navy, with a lighter stripe print) filled on a slightly noisy light-grey backdrop."""
    width, height = size
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(236, 1.5, (height, width, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.array(list(outline.values()), np.int32)], 1)
    garment = np.full((height, width, 3), (30, 40, 90), np.uint8)
    garment[(np.arange(height) // 20) % 2 == 0] = (60, 80, 150)
    image[mask > 0] = garment[mask > 0]
    return image


# The same tee laid so that its inside back shows through the neck opening: the outline's top is
# the back collar, level with the collar points, and the front collar is a colour edge below it.
TEE_BACK_COLLAR = {**TEE, "neckline": (300, 70)}
TEE_FRONT_NECKLINE = (300, 100)
INSIDE_BACK_COLOUR = (235, 140, 40)  # a label-orange lining, unlike the navy front


def product_image_with_inside_back() -> np.ndarray:
    """TEE_BACK_COLLAR with its inside back (above a U from collar point to collar point through
    TEE_FRONT_NECKLINE) in INSIDE_BACK_COLOUR."""
    image = product_image(TEE_BACK_COLLAR)
    (rx, ry), (lx, _), (fx, fy) = TEE["collar_right"], TEE["collar_left"], TEE_FRONT_NECKLINE
    xs = np.arange(rx, lx + 1)
    curve = fy + (ry - fy) * ((xs - fx) / ((lx - rx) / 2)) ** 2
    inside = drawn_mask(TEE_BACK_COLLAR)
    rows = np.arange(inside.shape[0])[:, None]
    above = np.zeros_like(inside)
    above[:, rx : lx + 1] = rows < curve[None, :]
    image[inside & above] = INSIDE_BACK_COLOUR
    return image


def drawn_mask(outline: dict[str, tuple[int, int]], size: tuple[int, int] = (600, 600)) -> np.ndarray:
    mask = np.zeros(size[::-1], np.uint8)
    cv2.fillPoly(mask, [np.array(list(outline.values()), np.int32)], 1)
    return mask.astype(bool)


def white_on_white(
    outline: dict[str, tuple[int, int]], size: tuple[int, int] = (600, 600), seed: int = 0
) -> np.ndarray:
    """A white garment on a backdrop retouched to pure white, as shops shoot them, JPEG-compressed:
    its body a unit or two of lightness under the backdrop, its outline a faint shadow with gaps
    at four of its corners."""
    width, height = size
    rng = np.random.default_rng(seed)
    shading = cv2.resize(rng.normal(0, 1, (height // 40, width // 40)), (width, height), interpolation=cv2.INTER_CUBIC)
    mask = drawn_mask(outline, size)
    image = np.full((height, width), 255.0)
    image[mask] = np.clip(251 + 1.5 * shading, 0, 255)[mask]
    contour = np.array(list(outline.values()), np.int32)
    shadow = np.zeros((height, width), np.uint8)
    cv2.polylines(shadow, [contour], True, 1, 3)
    for x, y in contour[rng.choice(len(contour), 4, replace=False)]:  # gaps where the shadow fades out
        cv2.circle(shadow, (int(x), int(y)), 12, 0, -1)
    image[shadow > 0] = 243
    grey = image.round().astype(np.uint8)
    _, jpeg = cv2.imencode(".jpg", cv2.merge([grey, grey, grey]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)


if __name__ == "__main__":  # `make demo` draws its garment with this: python -m tests.warp.drawn OUT.png
    import sys

    from PIL import Image

    Image.fromarray(product_image(TEE)).save(sys.argv[1])
