"""Fusion and the end-to-end try-on: what is kept, what is repainted, no ghosting, caching, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from services import learned
from services.common.artifacts import LocalArtifactStore
from services.common.config import PROJECT_ROOT
from services.common.contracts import LANDMARK_INDEX, LIP, Box, Landmark, ParseResult, PoseResult
from services.common.errors import CategoryUncertain, CategoryUnsupported
from services.common.inference import LocalBackend
from services.fusion import model as fusion_model
from services.fusion import stage as fusion_stage
from services.parser import stage as parser_stage
from services.parser.geometry import BodyFrame
from services.pipeline import Pipeline, check_category
from services.warp import stage as warp_stage
from services.warp.garment import analyse_garment
from tests.conftest import SHARED_DATA
from tests.warp.drawn import LAID_SLEEVES, LONG_SLEEVE, SCOOPED_TANK, TEE, TROUSERS, product_image

KEPT = (LIP["face"], LIP["hair"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, infer: LocalBackend) -> Pipeline:
    return Pipeline(LocalArtifactStore(tmp_path_factory.mktemp("artifacts")), infer)


def plain_tee(colour: tuple[int, int, int] = (40, 110, 60)) -> np.ndarray:
    image = product_image(TEE)
    image[analyse_garment(image).mask] = colour
    return image


def high_frequency_energy(image: np.ndarray, region: np.ndarray) -> float:
    """Mean squared difference from a 2-pixel Gaussian blur, over `region`: prints, edges, texture."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 2.0)
    return float((detail[region] ** 2).mean())


def test_tryon_keeps_face_hair_and_background_and_puts_the_garment_on_the_torso(
    astronaut: np.ndarray, pipeline: Pipeline
) -> None:
    result = pipeline.tryon(astronaut, product_image(TEE))
    assert result.image.shape == astronaut.shape and result.image.dtype == np.uint8
    assert result.category == "upper"
    labels = result.parse.labels
    # Face and hair, and everything else outside the repaint region (and its feathered edge)
    # and the garment, are the photo's own pixels.
    regions = fusion_stage.regions(astronaut, result.parse, result.pose, "upper")
    near_repaint = cv2.dilate(regions[0], np.ones((2 * fusion_model.FEATHER + 1,) * 2, np.uint8)) > 0
    untouched = ~near_repaint & (result.warped.rgba[..., 3] == 0)
    assert (np.isin(labels, KEPT) & untouched).sum() > 5000
    assert np.array_equal(result.image[untouched], astronaut[untouched])
    # The chest shows the navy tee, not the orange suit.
    pts = result.pose.landmark_array()[:, :2]
    shoulders = pts[[LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]]]
    hips = pts[[LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]]]
    x0, x1 = sorted(shoulders[:, 0])
    y = int(shoulders[:, 1].mean() + 0.3 * (hips[:, 1].mean() - shoulders[:, 1].mean()))
    chest = result.image[y - 5 : y + 5, int(x0 + 0.25 * (x1 - x0)) : int(x1 - 0.25 * (x1 - x0))].reshape(-1, 3)
    red, _, blue = chest.mean(axis=0)
    assert blue > red + 30, chest.mean(axis=0)


def test_no_ghosting_of_a_printed_top_through_a_plain_garment(
    astronaut: np.ndarray, pipeline: Pipeline, infer: LocalBackend
) -> None:
    """The person's top gets a strong checkerboard print; a plain green tee goes on. Inside the
    new garment the fine detail stays at the level of the warped plain garment itself."""
    pose, parse = pipeline.person(astronaut)
    printed = astronaut.copy()
    ys, xs = np.mgrid[0 : astronaut.shape[0], 0 : astronaut.shape[1]]
    checker = ((ys // 6 + xs // 6) % 2 == 0)[..., None]
    worn = (parse.labels == LIP["upper_clothes"])[..., None]
    printed = np.where(worn & checker, 255, np.where(worn, 0, printed)).astype(np.uint8)
    tee = plain_tee()
    parse = parse.model_copy(update={"agnostic": None})
    warped = warp_stage.run(tee, analyse_garment(tee), pose, parse, infer)
    result = fusion_stage.run(printed, parse, pose, warped, infer)

    inside = cv2.erode((warped.rgba[..., 3] > 0.99).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    inside &= (parse.labels == LIP["upper_clothes"]) & ~np.isin(parse.labels, (LIP["left_arm"], LIP["right_arm"]))
    assert inside.sum() > 5000
    warped_rgb = np.round(warped.rgba[..., :3] * 255).astype(np.uint8)
    plain = high_frequency_energy(warped_rgb, inside)
    print_energy = high_frequency_energy(printed, inside)
    assert print_energy > 1000  # the print is strong...
    # ...and none of it shows through: what detail there is (shading, rounding) stays under an
    # RMS of 2 grey levels, where a tenth of the print showing through would be over 10.
    assert high_frequency_energy(result, inside) <= plain + 4.0


def test_old_garment_guides_only_low_frequency_lighting(astronaut: np.ndarray, pipeline: Pipeline) -> None:
    assert fusion_stage.LIGHTING_SIGMA >= 0.02  # the blur of the old garment: at least 2% of the height
    pose, parse = pipeline.person(astronaut)
    parse = parse.model_copy(update={"agnostic": None})
    tee = plain_tee((128, 128, 128))
    warped = warp_stage.run(tee, analyse_garment(tee), pose, parse, pipeline.infer)
    dark, light = astronaut.copy(), astronaut.copy()
    worn = parse.labels == LIP["upper_clothes"]
    dark[worn] = 60
    light[worn] = 200
    # The same plain garment over a dark and a light old top, flat each: no change in lighting.
    a = fusion_stage.run(dark, parse, pose, warped, pipeline.infer).astype(int)
    b = fusion_stage.run(light, parse, pose, warped, pipeline.infer).astype(int)
    inside = cv2.erode((warped.rgba[..., 3] > 0.99).astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    inside &= worn
    assert np.abs(a[inside] - b[inside]).mean() < 3


def test_fusion_model_runs_the_same_scripted_and_eager(infer: LocalBackend) -> None:
    rng = np.random.default_rng(0)
    h, w = 64, 48
    inputs = {
        "image__0": rng.random((1, 3, h, w), dtype=np.float32),
        "garment__1": rng.random((1, 4, h, w), dtype=np.float32),
        "regions__2": (rng.random((1, len(fusion_model.REGIONS), h, w)) > 0.5).astype(np.float32),
        "lighting_sigma__3": np.array([[3.0]], np.float32),
    }
    scripted = infer(fusion_model.NAME, inputs)["tryon__0"]
    eager = fusion_model.TryonFusion()(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    assert scripted.shape == (1, 3, h, w)
    assert np.allclose(scripted, eager, atol=1e-5)
    assert scripted.min() >= 0 and scripted.max() <= 1


def empty_region_maps(height: int, width: int) -> dict[str, np.ndarray]:
    """Every region map empty, and the old garment's dye flat (albedo 1: luminance is light)."""
    maps = {name: np.zeros((height, width), np.float32) for name in fusion_model.REGIONS}
    maps["shading_albedo"][:] = 1.0
    return maps


def run_fusion_model(
    infer: LocalBackend, image: np.ndarray, garment: np.ndarray, maps: dict[str, np.ndarray], lighting_sigma: float
) -> np.ndarray:
    """tryon_fusion on HxWx3 `image` and HxWx4 `garment` (floats in [0, 1]) and the named region maps."""
    inputs = {
        "image__0": image.transpose(2, 0, 1)[None],
        "garment__1": garment.transpose(2, 0, 1)[None],
        "regions__2": np.stack([maps[name] for name in fusion_model.REGIONS])[None],
        "lighting_sigma__3": np.array([[lighting_sigma]], np.float32),
    }
    return infer(fusion_model.NAME, inputs)["tryon__0"][0].transpose(1, 2, 0)


def test_fusion_fills_below_the_waist_with_the_lower_garment(infer: LocalBackend) -> None:
    """A new top shorter than the old one: what it leaves uncovered shows the lower garment below
    the waist, skin on the body above it and the backdrop off the body, each in the photo's own colour."""
    h, w = 80, 60
    skin, trousers, backdrop, old_top, new_top = (
        (0.9, 0.7, 0.6),
        (0.1, 0.2, 0.6),
        (0.8, 0.8, 0.8),
        (0.7, 0.1, 0.1),
        (0.1, 0.6, 0.2),
    )
    image = np.empty((h, w, 3), np.float32)
    image[:] = backdrop
    image[:10, 15:45] = skin
    image[70:, 15:45] = trousers
    image[20:60, 10:50] = old_top
    garment = np.zeros((h, w, 4), np.float32)
    garment[20:35, 10:50] = (*new_top, 1.0)
    maps = empty_region_maps(h, w)
    maps["repaint"][20:60, 10:50] = maps["shading_source"][20:60, 10:50] = maps["garment_allowed"][20:60, 10:50] = 1
    maps["body"][:, 15:45] = 1
    maps["lower_body"][45:, 15:45] = 1
    maps["skin_source"][:10, 15:45] = 1
    maps["lower_source"][70:, 15:45] = 1
    maps["background_source"][:, :8] = maps["background_source"][:, 52:] = 1
    out = run_fusion_model(infer, image, garment, maps, lighting_sigma=2.0)
    assert np.allclose(out[27, 30], new_top, atol=0.02)  # the new top
    assert np.allclose(out[40, 30], skin, atol=0.05)  # uncovered, on the body, above the waist
    assert np.allclose(out[55, 30], trousers, atol=0.05)  # uncovered, below the waist: the trousers
    assert np.allclose(out[55, 12], backdrop, atol=0.05)  # uncovered, off the body: the backdrop


def test_a_stray_island_of_old_garment_does_not_set_the_light(infer: LocalBackend) -> None:
    """A dark button parsed as old garment, away from the rest of it: the new garment over it
    keeps its own colour (the shading fades where the old garment gives little support)."""
    h, w = 120, 80
    image = np.full((h, w, 3), 0.8, np.float32)
    image[10:60, 10:70] = 0.9  # the old top, white
    image[90:93, 39:42] = 0.05  # its dark button, on the skirt below
    garment = np.zeros((h, w, 4), np.float32)
    garment[10:110, 10:70] = (0.5, 0.5, 0.5, 1.0)  # a longer plain grey top goes on
    maps = empty_region_maps(h, w)
    for name in ("repaint", "shading_source"):
        maps[name][10:60, 10:70] = 1
        maps[name][90:93, 39:42] = 1
    maps["garment_allowed"][:] = 1
    out = run_fusion_model(infer, image, garment, maps, lighting_sigma=4.0)
    assert np.abs(out[85:98, 34:47] - 0.5).max() < 0.03
    assert np.abs(out[20:50, 20:60] - 0.5).max() < 0.02  # a flat old top: no change in light


def test_a_dark_old_garment_lends_less_of_its_light(infer: LocalBackend) -> None:
    """The same relative light and shade on a white old top and on a black satin one: the white
    top's shading carries over in full, the black one's (sheen over a tiny mean) much less."""
    h, w = 100, 80
    variation = np.ones((h, w), np.float32)
    variation[20:50, 10:40] = 0.5  # a shaded half
    variation[20:50, 40:70] = 1.5  # a lit (or shiny) half
    maps = empty_region_maps(h, w)
    maps["repaint"][10:90, 10:70] = maps["shading_source"][10:90, 10:70] = maps["garment_allowed"][:] = 1
    garment = np.zeros((h, w, 4), np.float32)
    garment[10:90, 10:70] = (0.6, 0.6, 0.6, 1.0)
    spread = {}
    for name, level in (("white", 0.6), ("black", 0.06)):
        image = np.full((h, w, 3), 0.8, np.float32)
        image[10:90, 10:70] = level * variation[10:90, 10:70, None]
        out = run_fusion_model(infer, image, garment, maps, lighting_sigma=3.0)
        spread[name] = float(out[30:40, 50:60].mean() - out[30:40, 20:30].mean())
    assert spread["white"] > 0.3
    assert 0 <= spread["black"] < 0.4 * spread["white"]


def test_the_old_garments_print_is_not_its_light(infer: LocalBackend) -> None:
    """A red top with broad white stripes: the stripes are dye, not light, so a plain new garment
    over it stays plain. The same red top lit from one side passes that light on."""
    h, w = 100, 80
    red, white = np.array((0.7, 0.1, 0.1)), np.array((0.95, 0.95, 0.95))
    maps = empty_region_maps(h, w)
    maps["repaint"][10:90, 10:70] = maps["shading_source"][10:90, 10:70] = maps["garment_allowed"][:] = 1
    garment = np.zeros((h, w, 4), np.float32)
    garment[10:90, 10:70] = (0.5, 0.5, 0.5, 1.0)
    rows = np.arange(h)[:, None]

    def fuse(top: np.ndarray) -> np.ndarray:
        image = np.full((h, w, 3), 0.8, np.float32)
        image[10:90, 10:70] = top[10:90, 10:70]
        photo = np.round(image * 255).astype(np.uint8)
        maps["shading_albedo"] = fusion_stage.garment_albedo(photo, maps["shading_source"] > 0)
        return run_fusion_model(infer, image, garment, maps, lighting_sigma=3.0)

    striped = np.where(((rows // 12) % 2 == 0)[..., None], white, red) * np.ones((h, w, 1))
    out = fuse(striped.astype(np.float32))
    assert np.abs(out[25:75, 25:55] - 0.5).max() < 0.04
    lit = red * np.where(np.arange(w)[None, :, None] < 40, 0.6, 1.0) * np.ones((h, 1, 1))
    out = fuse(lit.astype(np.float32))
    assert out[40:60, 50:60].mean() - out[40:60, 20:30].mean() > 0.1


def test_a_light_garment_takes_the_old_light_but_not_its_blotches(infer: LocalBackend) -> None:
    """An old top lit from one side and crumpled into blotches (folds a few lighting sigmas
    across): a mid-grey new garment takes both; a white one takes the side light as it would from
    an uncrumpled top, but only a fraction of the blotches, which on white read as crumpled foil."""
    h, w, sigma = 240, 160, 4.0
    rng = np.random.default_rng(0)
    blotches = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 2 * sigma)
    blotches *= 0.25 / blotches[20:220, 20:140].std()  # 25% of light, up and down
    side_light = np.linspace(0.6, 1.2, w, dtype=np.float32)[None, :] * np.ones((h, 1), np.float32)
    maps = empty_region_maps(h, w)
    maps["repaint"][20:220, 20:140] = maps["shading_source"][20:220, 20:140] = maps["garment_allowed"][:] = 1
    inner = (slice(50, 190), slice(40, 120))

    def light_on(level: float, old_light: np.ndarray) -> tuple[float, float]:
        """(fine light's spread, side light's step) on a new garment of grey `level`, in log units."""
        image = np.full((h, w, 3), 0.8, np.float32)
        image[20:220, 20:140] = 0.6 * old_light[20:220, 20:140, None]
        garment = np.zeros((h, w, 4), np.float32)
        garment[20:220, 20:140] = (level, level, level, 1.0)
        light = np.log(run_fusion_model(infer, image, garment, maps, sigma)[..., 1] / level)[inner]
        columns = light.mean(axis=0)
        # The step into the shaded side (white is not lit brighter than white on the other).
        return float((light - columns[None, :]).std()), float(columns[35:45].mean() - columns[:10].mean())

    fine_grey, _ = light_on(0.3, side_light * np.exp(blotches))
    fine_white, side_white = light_on(0.95, side_light * np.exp(blotches))
    _, side_white_uncrumpled = light_on(0.95, side_light)
    assert fine_grey > 0.1  # the blotches carry over onto a mid-tone garment...
    assert fine_white < 0.35 * fine_grey  # ...but hardly onto white
    assert side_white_uncrumpled > 0.1 and side_white > 0.8 * side_white_uncrumpled  # the side light does


def test_a_white_garments_edges_take_no_more_blotches_than_its_middle(infer: LocalBackend) -> None:
    """How much of the old garment's folds a garment takes falls with its dye's lightness, which
    is averaged over the garment alone: averaged with the empty canvas around it, a white
    garment's edges read dark and took the folds whole there (0.42 of the blotches against 0.25
    in the middle)."""
    h, w, sigma = 240, 160, 4.0
    rng = np.random.default_rng(0)
    blotches = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 2 * sigma)
    blotches *= 0.25 / blotches[20:220, 20:140].std()
    maps = empty_region_maps(h, w)
    maps["repaint"][20:220, 20:140] = maps["shading_source"][20:220, 20:140] = maps["garment_allowed"][:] = 1
    image = np.full((h, w, 3), 0.8, np.float32)
    image[20:220, 20:140] = 0.6 * np.exp(blotches[20:220, 20:140, None])
    garment = np.zeros((h, w, 4), np.float32)
    garment[20:220, 20:140] = (0.95, 0.95, 0.95, 1.0)
    light = np.log(run_fusion_model(infer, image, garment, maps, sigma)[..., 1] / 0.95)

    def taken(columns: slice) -> float:
        """The share of the old blotches in the new garment's light over these columns."""
        return float(np.polyfit(blotches[50:190, columns].ravel(), light[50:190, columns].ravel(), 1)[0])

    assert taken(slice(20, 26)) < 1.2 * taken(slice(60, 100))


SKIN = (225, 180, 150)
OLD_SLEEVE = (180, 20, 30)
# A person facing the camera (their left on the image's right), arms hanging against the torso.
DRAWN_JOINTS = {
    "nose": (300, 120), "left_eye": (315, 110), "right_eye": (285, 110),
    "left_shoulder": (380, 200), "right_shoulder": (220, 200),
    "left_elbow": (395, 330), "right_elbow": (205, 330),
    "left_wrist": (385, 450), "right_wrist": (215, 450),
    "left_hip": (350, 440), "right_hip": (250, 440),
    "left_knee": (345, 600), "right_knee": (255, 600),
    "left_ankle": (345, 760), "right_ankle": (255, 760),
}  # fmt: skip


def drawn_person(forearms: str = "upper_clothes") -> tuple[np.ndarray, PoseResult, ParseResult]:
    """(photo, pose, parse) of a drawn person in a red top and navy trousers, arms hanging
    against the torso. In long sleeves (forearms "upper_clothes") the parse cannot tell the
    sleeves from the torso (both upper clothes, one region), only the hands are skin; with
    forearms "arm", the top's sleeves end at the elbows. Pose and parse are given, not detected: the point is what
    the warp and fusion make of them."""
    height, width = 800, 600
    joints = {name: np.array(xy, float) for name, xy in DRAWN_JOINTS.items()}
    for side in ("left", "right"):  # the hand's points a little below the wrist
        for point in ("pinky", "index", "thumb"):
            joints[f"{side}_{point}"] = joints[f"{side}_wrist"] + (0, 25)
        joints[f"{side}_heel"] = joints[f"{side}_foot_index"] = joints[f"{side}_ankle"] + (0, 20)
    landmarks = []
    for name in LANDMARK_INDEX:
        x, y = joints.get(name, joints["nose"])
        landmarks.append(Landmark(x=x, y=y, z=0.0, visibility=1.0, presence=1.0))
    labels = np.zeros((height, width), np.uint8)
    px = lambda name: tuple(int(v) for v in joints[name])  # noqa: E731
    cv2.fillPoly(labels, [np.array([(205, 190), (395, 190), (365, 470), (235, 470)], np.int32)], LIP["upper_clothes"])
    for side in ("left", "right"):
        cv2.line(labels, px(f"{side}_hip"), px(f"{side}_ankle"), LIP["pants"], 60)
        cv2.circle(labels, px(f"{side}_index"), 20, LIP[f"{side}_arm"], -1)
        cv2.line(labels, px(f"{side}_shoulder"), px(f"{side}_elbow"), LIP["upper_clothes"], 44)
        cv2.line(
            labels, px(f"{side}_elbow"), px(f"{side}_wrist"), LIP[f"{side}_arm" if forearms == "arm" else forearms], 40
        )
    cv2.ellipse(labels, (300, 80), (55, 50), 0, 180, 360, LIP["hair"], -1)
    cv2.ellipse(labels, (300, 115), (45, 60), 0, 0, 360, LIP["face"], -1)
    colours = {"upper_clothes": OLD_SLEEVE, "pants": (30, 40, 90), "hair": (60, 40, 20), "face": SKIN}
    colours |= {"left_arm": SKIN, "right_arm": SKIN, "background": (205, 205, 205)}
    photo = np.zeros((height, width, 3), np.uint8)
    for name, colour in colours.items():
        photo[labels == LIP[name]] = colour
    mask = (labels != LIP["background"]).astype(np.float32)
    pose = PoseResult(
        image_width=width,
        image_height=height,
        landmarks=landmarks,
        box=Box(x0=150, y0=20, x1=450, y1=790),
        score=1.0,
        mask=mask,
    )
    return photo, pose, ParseResult(image_width=width, image_height=height, labels=labels)


def test_a_tee_over_long_sleeves_bares_the_arms_hanging_beside_it(infer: LocalBackend) -> None:
    """The parse does not tell a sleeved arm hanging beside the torso from the torso. A tee put
    over it must not lay its body across the arms: past its short sleeves the arms are bare skin,
    in front of it; past a tank top's armholes the whole arm is. A long-sleeved top covers them
    (its sleeves)."""
    photo, pose, parse = drawn_person()
    forearms = np.zeros(parse.labels.shape, np.uint8)
    for side in ("left", "right"):
        elbow, wrist = (DRAWN_JOINTS[f"{side}_{joint}"] for joint in ("elbow", "wrist"))
        cv2.line(forearms, (elbow[0], elbow[1] + 20), (wrist[0], wrist[1] - 20), 1, 16)
    forearms = forearms.astype(bool)
    chest = np.zeros_like(forearms)
    chest[250:300, 260:340] = True

    def tryon(garment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        warped = warp_stage.run(garment, analyse_garment(garment), pose, parse, infer)
        return warped.rgba[..., 3], fusion_stage.run(photo, parse, pose, warped, infer)

    tee = plain_tee()
    alpha, result = tryon(tee)
    assert alpha[chest].mean() > 0.95
    assert alpha[forearms].mean() < 0.1
    # The bare forearms are the hands' skin, neither the tee's green nor the old red sleeve.
    assert np.abs(result[forearms].astype(float) - SKIN).max(axis=1).mean() < 30

    # A tank top leaves the upper arms bare too, outside the shoulders' line.
    upper_arms = np.zeros(forearms.shape, np.uint8)
    for side in ("left", "right"):
        (sx, sy), (ex, ey) = (DRAWN_JOINTS[f"{side}_{joint}"] for joint in ("shoulder", "elbow"))
        cv2.line(upper_arms, (sx + (ex - sx) // 3, sy + (ey - sy) // 3), (ex, ey), 1, 16)
    upper_arms = upper_arms.astype(bool) & ~(parse.labels == LIP["background"])
    upper_arms[:, 235:366] = False  # outside the torso
    alpha, result = tryon(product_image(SCOOPED_TANK))
    assert alpha[chest].mean() > 0.95
    assert alpha[upper_arms].mean() < 0.1 and alpha[forearms].mean() < 0.1

    alpha, result = tryon(product_image(LONG_SLEEVE))
    assert alpha[forearms].mean() > 0.9


def test_painted_forearms_are_rounded_and_no_wider_than_the_sleeves(infer: LocalBackend) -> None:
    """Where a tee leaves an old long sleeve's forearm bare, the painted skin is an arm: no wider
    than the sleeve that hid it (it was a plank as wide as an upper arm all the way down), and
    darker at its sides than along its middle (it was one flat tone)."""
    photo, pose, parse = drawn_person()
    tee = plain_tee()
    warped = warp_stage.run(tee, analyse_garment(tee), pose, parse, infer)
    result = fusion_stage.run(photo, parse, pose, warped, infer).astype(float)
    luma = result @ np.array([0.299, 0.587, 0.114])
    skin_like = (result[..., 0] - result[..., 2] > 25) & (np.abs(result - SKIN).max(axis=2) < 70)
    for side in ("left", "right"):
        (ex, ey), (wx, wy) = (DRAWN_JOINTS[f"{side}_{joint}"] for joint in ("elbow", "wrist"))
        for y in (360, 400):
            x = round(ex + (wx - ex) * (y - ey) / (wy - ey))
            row = skin_like[y]
            assert row[x], (side, y)
            left, right = x, x
            while row[left - 1]:
                left -= 1
            while row[right + 1]:
                right += 1
            assert right - left + 1 <= 40, (side, y)  # the drawn sleeve's width
            centre = luma[y, (left + right) // 2]
            assert centre - max(luma[y, left + 2], luma[y, right - 2]) >= 5, (side, y)


def test_long_sleeves_laid_against_the_body_go_down_the_arms(infer: LocalBackend) -> None:
    """A flat-lay's long sleeves laid down against its body leave its outline without armpits, and
    the analysis finds no sleeves: they are still sleeves, down a short-sleeved shopper's bare
    forearms (they were left bare)."""
    _, pose, parse = drawn_person(forearms="arm")
    garment = product_image(LAID_SLEEVES)
    warped = warp_stage.run(garment, analyse_garment(garment), pose, parse, infer)
    forearms = np.isin(parse.labels, (LIP["left_arm"], LIP["right_arm"]))
    forearms &= np.mgrid[0 : forearms.shape[0], 0 : forearms.shape[1]][0] < 420  # not the hands
    assert warped.rgba[..., 3][forearms].mean() > 0.8


def test_the_shoulders_top_is_body_where_the_person_is() -> None:
    """Shoulders rise above the line between the shoulder joints. Where a new top leaves the
    old one's shoulders, they are the body's skin, not backdrop (a turned woman's far shoulder
    became a grey wedge by her neck); above the person's silhouette it is still the backdrop."""
    _, pose, _ = drawn_person()
    mask = pose.mask.copy()
    cv2.fillPoly(mask, [np.array([(205, 200), (235, 172), (365, 172), (395, 200)], np.int32)], 1.0)
    body = fusion_stage.body_region(pose.model_copy(update={"mask": mask}), mask.shape, "upper")
    trapezius = np.zeros(mask.shape, bool)
    trapezius[175:182, 240:262] = trapezius[175:182, 338:360] = True  # between the neck and the joints
    assert body[trapezius].all()
    assert not body[150:165, 230:250].any() and not body[150:165, 350:370].any()


def test_lower_fill_only_for_tops_over_a_lower_garment(astronaut: np.ndarray, pipeline: Pipeline) -> None:
    pose, parse = pipeline.person(astronaut)
    lower_body = fusion_model.REGIONS.index("lower_body")
    # The astronaut's photo ends at the chest: no lower garment, no lower fill.
    assert not fusion_stage.regions(astronaut, parse, pose, "upper")[lower_body].any()
    # Trousers at the bottom of the frame: below the waist line the lower fill may apply, above it never.
    labels = parse.labels.copy()
    labels[-40:][labels[-40:] == LIP["background"]] = LIP["pants"]
    with_trousers = parse.model_copy(update={"labels": labels, "agnostic": None})
    region = fusion_stage.regions(astronaut, with_trousers, pose, "upper")[lower_body] > 0
    assert region.any()
    ys, xs = np.nonzero(region)
    assert BodyFrame.from_points(pose.landmark_array()[:, :2]).coords(xs, ys)[0].min() >= fusion_stage.WAIST_T - 0.01
    # A dress replaces the lower garment itself: nothing to fill from.
    assert not fusion_stage.regions(astronaut, with_trousers, pose, "dress")[lower_body].any()


def test_person_and_garment_are_computed_once(astronaut: np.ndarray, infer: LocalBackend, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    events: list[tuple[str, str]] = []
    pipeline = Pipeline(store, infer)
    first = pipeline.tryon(astronaut, product_image(TEE), on_stage=lambda s, e, _: events.append((s, e)))
    assert ("pose", "done") in events and ("parser", "done") in events
    events.clear()
    second = Pipeline(store, infer).tryon(astronaut, product_image(TEE), on_stage=lambda s, e, _: events.append((s, e)))
    assert ("pose", "cached") in events and ("parser", "cached") in events and ("pose", "done") not in events
    assert second.seconds["pose"] == 0 and second.seconds["parser"] == 0
    assert np.array_equal(first.image, second.image)
    assert any(key.startswith("garment/") for key in store.list())


def test_trousers_on_a_half_body_photo_are_category_unsupported(astronaut: np.ndarray, pipeline: Pipeline) -> None:
    with pytest.raises(CategoryUnsupported) as caught:
        pipeline.tryon(astronaut, product_image(TROUSERS, size=(600, 620)))
    assert caught.value.code == "category_unsupported" and "knee" in caught.value.message


def test_a_person_seen_from_behind_is_category_unsupported(astronaut: np.ndarray, pipeline: Pipeline) -> None:
    """From behind, the pose puts the person's left shoulder on the photo's left (VITON's three back
    views among 1,000 photos read so). Her pose with the shoulders' sides swapped reads like that
    and is refused, for every category; her mirror image (a mirror selfie) is a front view and is not."""
    pose = pipeline.pose(astronaut)
    check_category(pose, "upper")
    check_category(pipeline.pose(np.ascontiguousarray(astronaut[:, ::-1])), "upper")
    landmarks = list(pose.landmarks)
    left, right = LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]
    landmarks[left], landmarks[right] = landmarks[right], landmarks[left]
    from_behind = pose.model_copy(update={"landmarks": landmarks})
    for category in ("upper", "lower", "dress"):
        with pytest.raises(CategoryUnsupported) as caught:
            check_category(from_behind, category)
        assert caught.value.code == "category_unsupported" and "faces away" in caught.value.message


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"FITROOM_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_tryon_single_with_debug_catalog_and_errors(
    tmp_path: Path, astronaut: np.ndarray, repository: Path
) -> None:
    garments = tmp_path / "garments"
    garments.mkdir()
    person = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(person)
    Image.fromarray(product_image(TEE)).save(garments / "tee.jpg", quality=95)
    Image.fromarray(np.full((300, 300, 3), 255, np.uint8)).save(garments / "blank.png")
    (garments / "notes.txt").write_text("not an image, and not listed as one")

    out = tmp_path / "result.png"
    result = run_cli(
        "tryon", "--person", str(person), "--garment", str(garments / "tee.jpg"), "-o", str(out),
        "--debug", str(tmp_path / "debug"), data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["category"] == "upper" and set(record["ms"]) == {"garment", "pose", "parser", "warp", "fusion"}
    assert np.array(Image.open(out)).shape == astronaut.shape
    expected = {"pose.jpg", "parse.png", "agnostic.png", "garment_mask.png", "garment_landmarks.jpg", "warped.png"}
    assert expected <= {p.name for p in (tmp_path / "debug").iterdir()}

    catalog = tmp_path / "catalog"
    result = run_cli(
        "tryon", "--person", str(person), "--garment-dir", str(garments), "-o", str(catalog),
        data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # the blank garment: nothing to try on
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("error", {}).get("code") for r in records] == ["garment_not_detected", None]
    assert records[1]["ms"]["pose"] == 0  # the person was cached by the first run
    assert sorted(p.name for p in catalog.iterdir()) == ["astronaut__tee.jpg"]
    assert "2/2" in result.stderr  # the progress bar

    result = run_cli(
        "tryon", "--person", str(garments / "notes.txt"), "--garment", str(garments / "tee.jpg"),
        "-o", str(tmp_path / "x.jpg"), data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 2 and "image_invalid" in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "x.jpg").exists()
    result = run_cli("tryon", "--person", str(person), "-o", str(tmp_path / "y.jpg"), data_dir=tmp_path / "data")
    assert result.returncode == 2 and "--garment" in result.stderr


PHOTOS = SHARED_DATA / "photos"
PERSONS = sorted(p.name for p in (PHOTOS / "person").iterdir()) if PHOTOS.is_dir() else ["(no shared data)"]
KNOWN_FAILURES = {
    # The parser labels the dark suit around the tie as hair, which fusion keeps in front of
    # the new garment: a band of suit shows down the middle of the chest.
    "wild_idm_will1.jpg": "parser: the suit's dark front parses as hair, kept in front",
}


# The learned path with the reference weights (38 minutes of CPU training, 2026-12-03).
# (2026-12-04: the print that ghosted over dresscode_050855_0's chest keeps now: the mask floor.)
# (2026-12-04, evening: dresscode_050855_0's sheer blouse no longer comes out translucent with a
# dark waist band since a light garment takes fewer of the old garment's folds.)
LEARNED_KNOWN_FAILURES: dict[str, str] = {}
# Single pairs, (path, person, garment): the rest of the person's garments are still checked. Strict too.
KNOWN_PAIR_FAILURES = {
    ("default", "vitonhd_01008_00.jpg", "vitonhd_09290_00.jpg"): "parser: the peach blouse, evenly lit since "
    "light garments take fewer of the old folds, parses as skin across the chest (it looks right on the sheet)",
    ("learned", "dresscode_050855_0.jpg", "vitonhd_09290_00.jpg"): "parser: the same peach blouse, as evenly "
    "lit by the fourteenth session's weights, parses as skin across half the chest (it covers it on the sheet)",
}
REFERENCE_WEIGHTS = PROJECT_ROOT / "weights" / "research" / "viton" / "tryon.pt"


@pytest.fixture(scope="module", params=["default", "learned"])
def unpaired(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, infer: LocalBackend, repository: Path
) -> tuple[Pipeline, list]:
    """The default pipeline, and the learned path with the VITON reference weights installed."""
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    from services.common.imageio import read_image_file

    store = LocalArtifactStore(tmp_path_factory.mktemp("unpaired"))
    pipeline = Pipeline(store, infer)
    if request.param == "learned":
        if not REFERENCE_WEIGHTS.is_file():
            pytest.skip("no reference weights in weights/research/viton")
        models = tmp_path_factory.mktemp("learned") / "triton_models"
        shutil.copytree(repository, models)
        learned.install(REFERENCE_WEIGHTS, models, "reference")
        pipeline = Pipeline(store, LocalBackend(models), "reference")
    garments = []
    for path in sorted((PHOTOS / "garment").iterdir()):
        image = read_image_file(path, rgba=True)
        try:
            if pipeline.garment(image).category == "upper":
                garments.append((path.name, image))
        except CategoryUncertain:  # the white tank on flat grey: asked for, not guessed
            continue
    assert len(garments) >= 5
    return pipeline, garments


@pytest.mark.parametrize(
    "person_name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name]))
        if name in KNOWN_FAILURES
        else name
        for name in PERSONS
    ],
)
def test_unpaired_photos_keep_face_hands_and_lower_garment(
    person_name: str, unpaired: tuple[Pipeline, list], infer: LocalBackend
) -> None:
    """Every top of ../shared/data/photos on this person: parsing the output finds the face,
    the hands and the lower garment where they were, and the new garment over the torso."""
    from services.common.imageio import read_image_file

    pipeline, garments = unpaired
    problems = []
    person_path = PHOTOS / "person" / person_name
    person = read_image_file(person_path)
    pose, before = pipeline.person(person)
    pts = pose.landmark_array()[:, :2]
    t_axis = BodyFrame.from_points(pts)
    for name, garment in garments:
        found = len(problems)
        result = pipeline.tryon(person, garment, "upper")
        after = parser_stage.run(result.image, pose, infer)
        case = f"{person_path.name} + {name}"
        was, now = before.labels == LIP["face"], after.labels == LIP["face"]
        if was.sum() > 500 and (was & now).sum() / (was | now).sum() < 0.8:
            problems.append(f"{case}: face IoU {(was & now).sum() / (was | now).sum():.2f}")
        lower = np.isin(before.labels, (LIP["pants"], LIP["skirt"]))
        xs, ys = np.meshgrid(np.arange(person.shape[1]), np.arange(person.shape[0]))
        t, _ = t_axis.coords(xs.astype(np.float32), ys.astype(np.float32))
        lower &= t > 1.4  # below the hips, where no top reaches
        if lower.sum() > 2000:
            changed = (np.abs(result.image[lower].astype(int) - person[lower]).max(axis=1) > 8).mean()
            if changed > 0.05:
                problems.append(f"{case}: {changed:.0%} of the lower garment changed")
        for side in ("left", "right"):
            hand = pts[LANDMARK_INDEX[f"{side}_index"]].round().astype(int)
            x, y = hand
            if 0 <= y < person.shape[0] and 0 <= x < person.shape[1] and before.labels[y, x] in (14, 15):
                patch = (slice(max(0, y - 3), y + 4), slice(max(0, x - 3), x + 4))
                if np.abs(result.image[patch].astype(int) - person[patch]).max() > 8:
                    problems.append(f"{case}: {side} hand repainted")
        shoulders = pts[[LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]]]
        x0, x1 = sorted(shoulders[:, 0])
        y_chest = int(shoulders[:, 1].mean() + 0.3 * t_axis.length)
        chest = after.labels[y_chest, int(x0 + 0.25 * (x1 - x0)) : int(x1 - 0.25 * (x1 - x0))]
        covered = np.isin(chest, (LIP["upper_clothes"], LIP["dress"], LIP["coat"])).mean()
        if covered < 0.7:
            problems.append(f"{case}: {covered:.0%} of the chest parses as a garment")
        known_pair = KNOWN_PAIR_FAILURES.get(("learned" if pipeline.learned else "default", person_name, name))
        if known_pair:  # its problems are expected; a known failure that passes is reported
            expected = problems[found:]
            del problems[found:]
            if not expected:
                problems.append(f"{case}: fixed, remove it from KNOWN_PAIR_FAILURES: {known_pair}")
    known = LEARNED_KNOWN_FAILURES.get(person_name) if pipeline.learned else None
    if known:  # strict: a known failure that passes is reported, so the entry is removed
        assert problems, f"fixed, remove it from LEARNED_KNOWN_FAILURES: {known}"
        pytest.xfail(f"{known}: {'; '.join(problems)}")
    assert not problems, "\n".join(problems)
