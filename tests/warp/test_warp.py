"""The warp: the garment_warp model against a known mapping, the stage on a real photo, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.contracts import LANDMARK_INDEX, LIP, GarmentAnalysis
from services.common.inference import LocalBackend
from services.parser import stage as parser_stage
from services.parser.geometry import BodyFrame
from services.pose import stage as pose_stage
from services.warp import stage as warp_stage
from services.warp import tps
from services.warp.garment import analyse_garment
from services.warp.model import PARTS
from tests.warp.drawn import (
    INSIDE_BACK_COLOUR,
    JEANS,
    LONG_DRESS,
    MIDI_SKIRT,
    MINI_SKIRT,
    TEE,
    drawn_mask,
    product_image,
    product_image_with_inside_back,
)


def _shifted_warp(infer: LocalBackend, rgb: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """garment_warp with every part's spline fitted to a 10 px shift to the right; part 0 only."""
    height, width = rgb.shape[:2]
    canvas = np.random.default_rng(0).uniform(10, 90, (12, 2))
    garment = canvas - (10, 0)
    unit = max(height, width)
    source = canvas / unit
    target = garment * [2 / (width - 1), 2 / (height - 1)] - 1
    points, weights = tps.padded(source, tps.fit(source, target, 0.0))
    alpha = np.zeros((1, PARTS, height, width), np.float32)
    alpha[0, 0] = 1
    return infer(
        "garment_warp",
        {
            "rgb__0": rgb.transpose(2, 0, 1)[None],
            "part_alpha__1": alpha,
            "control_points__2": np.repeat(points[None, None], PARTS, axis=1),
            "weights__3": np.repeat(weights[None, None], PARTS, axis=1),
            "canvas_size__4": np.array([[height, width]], np.int32),
            "canvas_mask__5": shown,
        },
    )["warped__0"][0]


def test_model_reproduces_a_known_shift(infer: LocalBackend) -> None:
    """Splines fitted to a pure translation must sample the garment 10 px to the left."""
    height, width = 96, 128
    rgb = np.random.default_rng(1).random((height, width, 3)).astype(np.float32)
    out = _shifted_warp(infer, rgb, np.ones((1, PARTS, height, width), np.uint8))
    assert out.shape == (4, height, width)
    assert np.allclose(out[:3, :, 10:], rgb.transpose(2, 0, 1)[:, :, :-10], atol=1e-3)
    assert np.all(out[3, :, :9] == 0) and np.allclose(out[3, :, 11:], 1, atol=1e-4)


def test_model_shows_each_part_only_inside_its_canvas_mask(infer: LocalBackend) -> None:
    height, width = 96, 128
    rgb = np.random.default_rng(1).random((height, width, 3)).astype(np.float32)
    shown = np.zeros((1, PARTS, height, width), np.uint8)
    shown[0, 0, 20:60, 30:100] = 1
    shown[0, 1:] = 1  # other parts' masks do not matter: their alpha is zero
    out = _shifted_warp(infer, rgb, shown)
    inside = np.zeros((height, width), bool)
    inside[20:60, 30:100] = True
    assert np.allclose(out[3][inside], 1, atol=1e-4) and np.all(out[3][~inside] == 0)
    assert np.allclose(out[:3, 20:60, 30:100], rgb.transpose(2, 0, 1)[:, 20:60, 20:90], atol=1e-3)
    assert np.all(_shifted_warp(infer, rgb, np.zeros_like(shown)) == 0)


def test_spline_fits_its_points_and_bends_less_when_regularised() -> None:
    rng = np.random.default_rng(1)
    source = rng.random((15, 2))
    target = source + 0.05 * rng.standard_normal((15, 2))
    exact = tps.evaluate(source, tps.fit(source, target, 0.0), source)
    assert np.allclose(exact, target, atol=1e-8)
    smooth = tps.evaluate(source, tps.fit(source, target, 1.0), source)
    assert np.abs(smooth - target).max() > np.abs(exact - target).max()


@pytest.fixture(scope="module")
def astronaut_inputs(astronaut: np.ndarray, infer: LocalBackend) -> tuple:
    pose = pose_stage.run(astronaut, infer)
    return pose, parser_stage.run(astronaut, pose, infer)


def test_tee_lands_on_the_torso_of_a_real_photo(
    astronaut: np.ndarray, astronaut_inputs: tuple, infer: LocalBackend
) -> None:
    pose, parse = astronaut_inputs
    image = product_image(TEE)
    warped = warp_stage.run(image, analyse_garment(image), pose, parse, infer)
    assert warped.rgba.shape == (*astronaut.shape[:2], 4)
    assert warped.rgba.min() >= 0 and warped.rgba.max() <= 1
    alpha = warped.rgba[..., 3] > 0.5
    pts = pose.landmark_array()[:, :2]
    shoulders = pts[[LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]]]
    hips = pts[[LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]]]
    # The chest between the shoulders, a fifth of the way down to the hips, is covered...
    x0, x1 = sorted(shoulders[:, 0])
    y = int(shoulders[:, 1].mean() + 0.2 * (hips[:, 1].mean() - shoulders[:, 1].mean()))
    assert alpha[y, int(x0 + 0.2 * (x1 - x0)) : int(x1 - 0.2 * (x1 - x0))].mean() > 0.95
    # ...the face is not, and nothing lands far from the body.
    eyes = pts[[LANDMARK_INDEX["left_eye"], LANDMARK_INDEX["right_eye"]]]
    assert not alpha[: int(eyes[:, 1].max())].any()
    assert not alpha[parse.labels == LIP["face"]].any()
    # The garment's colours are the product image's (navy and its lighter stripes).
    colours = warped.rgba[alpha][:, :3] * 255
    assert np.abs(colours.mean(axis=0) - (45, 60, 120)).max() < 25


def test_a_skirt_hangs_across_legs_that_stand_apart(shared_person_photos: list[Path], infer: LocalBackend) -> None:
    """A skirt is one piece: on a woman standing with her legs apart (dresscode_048462_0), a
    mini skirt covers the gap between her thighs; trousers (a crotch) still go on each leg."""
    from services.common.imageio import read_image_file

    person = read_image_file(next(p for p in shared_person_photos if p.stem == "dresscode_048462_0"))
    pose = pose_stage.run(person, infer)
    parse = parser_stage.run(person, pose, infer, "lower")
    pts = pose.landmark_array()[:, :2]
    hips = pts[[LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]]][:, 1].mean()
    knees = pts[[LANDMARK_INDEX["left_knee"], LANDMARK_INDEX["right_knee"]]][:, 1].mean()
    row = int(hips + 0.75 * (knees - hips))  # above the knees, where her legs part
    xs = np.nonzero(np.isin(parse.labels[row], (LIP["left_leg"], LIP["right_leg"], LIP["pants"], LIP["skirt"])))[0]
    runs = sorted(np.split(xs, np.nonzero(np.diff(xs) > 1)[0] + 1), key=len)[-2:]  # the two legs
    gap = slice(min(r[-1] for r in runs) + 1, max(r[0] for r in runs))
    assert gap.stop - gap.start >= 15, "the photo should show a gap between the legs here"

    def covered(outline: dict) -> float:
        image = product_image(outline)
        alpha = warp_stage.run(image, analyse_garment(image, "lower"), pose, parse, infer).rgba[..., 3]
        return float((alpha[row, gap] > 0.5).mean())

    assert covered(MINI_SKIRT) > 0.9
    assert covered(JEANS) < 0.5


def test_a_garment_longer_than_the_legs_ends_at_the_ankles(
    shared_person_photos: list[Path], infer: LocalBackend
) -> None:
    """A skirt and a dress drawn far longer than the person's legs end at her ankles, not over her
    shoes (dresscode_050855_0, a woman in heels)."""
    from services.common.imageio import read_image_file

    person = read_image_file(next(p for p in shared_person_photos if p.stem == "dresscode_050855_0"))
    pose = pose_stage.run(person, infer)
    pts = pose.landmark_array()[:, :2]
    ankles = pts[[LANDMARK_INDEX["left_ankle"], LANDMARK_INDEX["right_ankle"]]][:, 1].max()
    margin = 0.02 * person.shape[0]
    for outline, size, category in ((MIDI_SKIRT, (600, 1400), "lower"), (LONG_DRESS, (600, 1600), "dress")):
        parse = parser_stage.run(person, pose, infer, category)
        tall = dict(outline)
        for name in ("hem_right", "hem_left"):  # the hem moved down to the canvas's foot
            tall[name] = (outline[name][0], size[1] - 30)
        image = product_image(tall, size=size)
        alpha = warp_stage.run(image, analyse_garment(image, category), pose, parse, infer).rgba[..., 3]
        lowest = np.nonzero((alpha > 0.5).any(axis=1))[0].max()
        assert lowest <= ankles + margin, (category, lowest, ankles)


def test_torso_lies_over_the_sleeve_parts(astronaut_inputs: tuple, infer: LocalBackend) -> None:
    """The sleeve parts follow the arms, but where the torso's own spline covers the body the
    torso is on top: a tee with red sleeves keeps its navy chest whole out to the shoulders."""
    pose, parse = astronaut_inputs
    image = product_image(TEE)
    garment = analyse_garment(image)
    sleeves = drawn_mask(TEE).astype(bool)
    sleeves[:, TEE["armpit_right"][0] : TEE["armpit_left"][0] + 1] = False
    image[sleeves] = (200, 30, 30)
    warped = warp_stage.run(image, garment, pose, parse, infer).rgba
    pts = pose.landmark_array()[:, :2]
    shoulders = pts[[LANDMARK_INDEX["left_shoulder"], LANDMARK_INDEX["right_shoulder"]]]
    hips = pts[[LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]]]
    x0, x1 = sorted(shoulders[:, 0])
    top, bottom = shoulders[:, 1].mean(), hips[:, 1].mean()
    chest = warped[
        int(top + 0.15 * (bottom - top)) : int(top + 0.4 * (bottom - top)),
        int(x0 + 0.1 * (x1 - x0)) : int(x1 - 0.1 * (x1 - x0)),
    ]
    shown = chest[..., 3] > 0.5
    assert shown.mean() > 0.9
    red = (chest[..., 0] > 0.5) & (chest[..., 2] < 0.3)
    assert red[shown].mean() < 0.02


def test_a_sleeves_cap_over_the_shoulder_takes_the_sleeves_root(astronaut_inputs: tuple) -> None:
    """A sleeve is drawn on the arm's tube, whose cap rounds the shoulder joint. Past the joint
    the spline used to run on along the arm's line into the flat-lay's chest, and where the
    torso did not cover the cap it showed the chest's colours on the shoulder (a white slab of
    the FILA tee's chest band). There it takes the sleeve's root."""
    pose, parse = astronaut_inputs
    garment = analyse_garment(product_image(TEE))
    body = warp_stage.Body(pose, parse)
    sleeves = [p for p in warp_stage.upper_parts(garment, body) if p.alpha is None]
    assert len(sleeves) == 2
    unit = float(max(parse.image_height, parse.image_width))
    pts = pose.landmark_array()[:, :2]
    for sleeve, side in zip(sorted(sleeves, key=lambda p: p.canvas[:, 0].mean()), ("right", "left"), strict=True):
        shoulder, elbow = (pts[LANDMARK_INDEX[f"{side}_{joint}"]] for joint in ("shoulder", "elbow"))
        cap = shoulder + 0.15 * (shoulder - elbow)  # over the shoulder, along the arm's line
        g_cap = tps.evaluate(
            sleeve.canvas / unit,
            tps.fit(sleeve.canvas / unit, sleeve.garment, warp_stage.REGULARISATION),
            cap[None] / unit,
        )[0]
        mark = lambda name: np.asarray(garment.landmarks[name], float)  # noqa: E731
        root = (mark(f"shoulder_{side}") + mark(f"armpit_{side}")) / 2
        cuff = (mark(f"sleeve_{side}_outer") + mark(f"sleeve_{side}_inner")) / 2
        axis = (cuff - root) / np.linalg.norm(cuff - root)
        # Not back into the chest past the sleeve's root (it was a fifth of a sleeve's length in).
        assert (g_cap - root) @ axis > -0.05 * np.linalg.norm(cuff - root), side


def test_inside_back_is_behind_the_neck(astronaut_inputs: tuple, infer: LocalBackend) -> None:
    """A tee whose inside back (orange) shows above its front collar: the front collar sits at
    the neck's base, and the inside back never shows on the neck's skin, which is in front of it."""
    pose, parse = astronaut_inputs
    image = product_image_with_inside_back()
    garment = analyse_garment(image)
    assert "neckline_front" in garment.landmarks
    frame = BodyFrame.from_points(pose.landmark_array()[:, :2])
    # A bare neck: skin in a band from the chin down to just below the shoulder line.
    height, width = parse.labels.shape
    ys, xs = np.mgrid[0:height, 0:width]
    t, across = frame.coords(xs.astype(np.float32), ys.astype(np.float32))
    neck = (np.abs(across) * frame.length < 0.2 * frame.shoulder_width) & (t > -0.35) & (t < 0.05)
    labels = np.where(neck & (parse.labels != LIP["face"]), LIP["torso_skin"], parse.labels).astype(np.uint8)
    with_neck = parse.model_copy(update={"labels": labels})

    def orange_on_neck(analysis: GarmentAnalysis) -> tuple[np.ndarray, np.ndarray, int]:
        warped = warp_stage.run(image, analysis, pose, with_neck, infer).rgba
        shown = warped[..., 3] > 0.5
        orange = shown & (np.abs(warped[..., :3] * 255 - INSIDE_BACK_COLOUR).max(axis=2) < 40)
        return shown, orange, int((orange & neck).sum())

    shown, orange, ours = orange_on_neck(garment)
    # Without the front neckline (the analysis before it was found) the inside back covers the neck;
    # with it, at most a fringe where the real neckline's curve departs from the modelled one.
    landmarks = {k: v for k, v in garment.landmarks.items() if k != "neckline_front"}
    _, _, unaware = orange_on_neck(garment.model_copy(update={"landmarks": landmarks}))
    assert unaware > 500
    assert ours < 0.1 * unaware
    # The front collar (navy) reaches up to the neck's base.
    centre_column = np.abs(across) * frame.length < 0.05 * frame.shoulder_width
    front_top = t[shown & centre_column & ~orange].min()
    assert -0.1 < front_top < 0.12


def test_warp_ignores_the_outline_of_the_garment_worn_now(astronaut_inputs: tuple, infer: LocalBackend) -> None:
    """Cloth-agnostic: relabelling the worn top (as a coat, or as trousers) changes nothing."""
    pose, parse = astronaut_inputs
    image = product_image(TEE)
    garment = analyse_garment(image)
    reference = warp_stage.run(image, garment, pose, parse, infer).rgba
    for other in (LIP["coat"], LIP["pants"]):
        labels = np.where(parse.labels == LIP["upper_clothes"], other, parse.labels).astype(np.uint8)
        relabelled = parse.model_copy(update={"labels": labels})
        assert np.array_equal(warp_stage.run(image, garment, pose, relabelled, infer).rgba, reference)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_garment_and_warp_pairs(tmp_path: Path, astronaut: np.ndarray, repository: Path) -> None:
    people, garments, out = tmp_path / "people", tmp_path / "garments", tmp_path / "out"
    people.mkdir()
    garments.mkdir()
    Image.fromarray(astronaut).save(people / "astronaut.png")
    Image.fromarray(product_image(TEE)).save(garments / "tee.jpg", quality=95)
    Image.fromarray(np.full((300, 300, 3), 255, np.uint8)).save(garments / "blank.png")

    result = run_cli("garment", str(garments / "tee.jpg"), str(garments / "blank.png"), "-o", str(out))
    assert result.returncode == 3, result.stderr
    tee, blank = (json.loads(line) for line in result.stdout.splitlines())
    assert tee["category"] == "upper" and "armpit_left" in tee["landmarks"]
    assert json.loads((out / "tee.json").read_text())["category"] == "upper"
    assert np.array(Image.open(out / "tee_mask.png")).max() == 255
    assert blank["error"]["code"] == "garment_not_detected"

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("astronaut.png tee.jpg\nastronaut.png blank.png\nmissing.png tee.jpg\n")
    result = run_cli(
        "warp", "--pairs", str(pairs), "--person-dir", str(people), "--garment-dir", str(garments), "-o", str(out)
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 2, result.stderr  # an unreadable file outranks "no garment found"
    assert [r.get("error", {}).get("code") for r in records] == [None, "garment_not_detected", "image_invalid"]
    warped = np.array(Image.open(out / "astronaut__tee.png"))
    assert warped.shape == (*astronaut.shape[:2], 4) and warped[..., 3].max() == 255
    assert not (out / "astronaut__blank.png").exists()
