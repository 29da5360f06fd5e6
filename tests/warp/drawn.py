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


if __name__ == "__main__":  # `make demo` draws its garment with this: python -m tests.warp.drawn OUT.png
    import sys

    from PIL import Image

    Image.fromarray(product_image(TEE)).save(sys.argv[1])
