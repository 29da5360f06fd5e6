"""The default try-off on a real photo (the astronaut) wearing a drawn striped tee, put on her by the
try-on pipeline: the flat-lay keeps the tee's colour and its stripes, fills what an arm hides, and
refuses photos without a person or without a garment of the category."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import color

from services.common.artifacts import LocalArtifactStore
from services.common.config import PROJECT_ROOT
from services.common.contracts import LIP
from services.common.errors import CategoryUnsupported, GarmentNotDetected, ModelUnavailable, NoPersonDetected
from services.common.inference import LocalBackend
from services.parser.geometry import arm_chain, chain_coords
from services.pipeline import Pipeline
from services.warp import tryoff
from services.warp.stage import Body
from tests.warp.drawn import TEE, drawn_mask, product_image

STRIPE_PERIOD = 40  # the drawn tee's stripes repeat every 40 of its 600 pixels
TEE_PERIODS = (TEE["hem_left"][1] - TEE["neckline"][1]) / STRIPE_PERIOD  # 10.5, neckline to hem


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, infer: LocalBackend) -> Pipeline:
    return Pipeline(LocalArtifactStore(tmp_path_factory.mktemp("artifacts")), infer)


@pytest.fixture(scope="module")
def wearing_tee(astronaut: np.ndarray, pipeline: Pipeline) -> np.ndarray:
    """The astronaut wearing the drawn striped tee (the try-on pipeline's result)."""
    return pipeline.tryon(astronaut, product_image(TEE)).image


def mean_lab(pixels: np.ndarray) -> np.ndarray:
    return color.rgb2lab(pixels.reshape(1, -1, 3).astype(np.float64) / 255.0).reshape(-1, 3).mean(axis=0)


def stripe_profile(rgba: np.ndarray) -> tuple[int, float, float]:
    """Down the flat-lay's centre band (a fifth of its width, the rows it fully covers): the grey
    level's dominant period in pixels, its autocorrelation there (1 = perfectly periodic) and the
    number of periods along the band."""
    mask = rgba[..., 3] > 0
    columns = np.flatnonzero(mask.any(axis=0))
    centre, half = (columns[0] + columns[-1]) // 2, max(2, (columns[-1] - columns[0]) // 10)
    covered = np.flatnonzero(mask[:, centre - half : centre + half].all(axis=1))
    rows = np.arange(covered[0], covered[-1] + 1)
    grey = cv2.cvtColor(np.ascontiguousarray(rgba[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float64)
    profile = grey[rows, centre - half : centre + half].mean(axis=1)
    window = 61  # longer than a stripe period: what it takes away is the light, not the print
    detrended = (profile - np.convolve(profile, np.ones(window) / window, "same"))[window // 2 : -(window // 2)]
    auto = np.correlate(detrended, detrended, "full")[len(detrended) - 1 :]
    auto /= auto[0]
    lag = int(np.argmax(auto[5 : len(detrended) // 3])) + 5
    return lag, float(auto[lag]), len(rows) / lag


def test_the_tee_comes_off_with_its_colour_and_its_stripes(wearing_tee: np.ndarray, pipeline: Pipeline) -> None:
    result = pipeline.tryoff(wearing_tee, "upper")
    assert result.rgba.shape == (*wearing_tee.shape[:2], 4) and result.rgba.dtype == np.uint8
    mask = result.rgba[..., 3] > 0
    assert 0.15 < mask.mean() < 0.8  # a garment filling much of the canvas, not a speck or everything
    tee = product_image(TEE)
    delta_e = color.deltaE_ciede2000(mean_lab(result.rgba[..., :3][mask]), mean_lab(tee[drawn_mask(TEE)]))
    assert delta_e < 5.0, delta_e
    period, strength, periods = stripe_profile(result.rgba)
    assert strength > 0.6, (period, strength)  # stripes are still stripes: strongly periodic rows
    # as many of them as the tee has between neckline and hem, give or take the hem's placement
    assert 0.7 * TEE_PERIODS < periods < 1.3 * TEE_PERIODS, (period, periods)


def test_what_an_arm_hides_is_filled_with_the_garments_colours(
    wearing_tee: np.ndarray, pipeline: Pipeline, infer: LocalBackend
) -> None:
    """A skin-coloured forearm painted across the tee (labelled arm in the parse): the flat-lay still
    has garment there, coloured like the tee, not like the arm."""
    pose, parse = pipeline.person(wearing_tee)
    labels, image = parse.labels.copy(), wearing_tee.copy()
    ys, xs = np.nonzero(labels == LIP["upper_clothes"])
    band = (ys > np.percentile(ys, 55)) & (ys < np.percentile(ys, 70)) & (np.abs(xs - xs.mean()) < 0.3 * xs.std())
    labels[ys[band], xs[band]] = LIP["left_arm"]
    image[ys[band], xs[band]] = (224, 172, 150)
    result = tryoff.extract(image, pose, parse.model_copy(update={"labels": labels}), "upper")
    clear = tryoff.extract(wearing_tee, pose, parse, "upper")
    assert result.hidden_share > clear.hidden_share + 0.01
    mask = result.rgba[..., 3] > 0
    assert abs(mask.mean() - (clear.rgba[..., 3] > 0).mean()) < 0.02  # the same outline: no hole where the arm was
    skin = mean_lab(np.array([[224, 172, 150]], np.uint8))
    tee = mean_lab(product_image(TEE)[drawn_mask(TEE)])
    filled = mean_lab(result.rgba[..., :3][mask])
    assert color.deltaE_ciede2000(filled, tee) < 5.0 < color.deltaE_ciede2000(filled, skin)


def test_the_outline_is_one_symmetric_piece_whatever_the_parse_adds_or_loses(
    wearing_tee: np.ndarray, pipeline: Pipeline
) -> None:
    """A hole the parse punched in the tee and a stray patch of "tee" on the thigh, far below its hem:
    the flat-lay's outline is still one symmetric piece without holes, as without them."""
    pose, parse = pipeline.person(wearing_tee)
    labels = parse.labels.copy()
    ys, xs = np.nonzero(labels == LIP["upper_clothes"])
    top, bottom, centre = np.percentile(ys, 5), ys.max(), xs.mean()
    hole = (ys > top + 0.45 * (bottom - top)) & (ys < top + 0.6 * (bottom - top)) & (xs < centre)
    labels[ys[hole], xs[hole]] = LIP["background"]
    height, width = labels.shape
    stray = (slice(min(height - 1, bottom + height // 8), min(height, bottom + height // 5)), slice(0, width // 5))
    labels[stray] = LIP["upper_clothes"]
    clear = tryoff.extract(wearing_tee, pose, parse, "upper").rgba[..., 3] > 0
    mask = tryoff.extract(wearing_tee, pose, parse.model_copy(update={"labels": labels}), "upper").rgba[..., 3] > 0
    count, _ = cv2.connectedComponents(mask.astype(np.uint8))
    assert count == 2  # the background and one garment
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 0)
    assert not outside.any()  # no hole: all of the background reaches the border
    mirrored = mask[:, ::-1]
    assert (mask & mirrored).sum() / (mask | mirrored).sum() > 0.97
    assert (mask & clear).sum() / (mask | clear).sum() > 0.95


def test_the_wearers_skin_taken_for_the_tee_is_not_its_colour(
    wearing_tee: np.ndarray, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A V-neck: her skin below the collar, which the parse calls skin but for a fringe it calls the
    tee (as it does at a V-neck's edges). The flat-lay fills the fringe with the tee's colours,
    not the skin's. Without that rule the skin shows."""
    pose, parse = pipeline.person(wearing_tee)
    image, labels = wearing_tee.copy(), parse.labels.copy()
    skin = tuple(int(c) for c in np.median(wearing_tee[parse.labels == LIP["face"]], axis=0))
    ys, xs = np.nonzero(parse.labels == LIP["upper_clothes"])
    top, depth = np.percentile(ys, 2), 0.1 * (ys.max() - np.percentile(ys, 2))
    v_neck = (ys < top + depth) & (np.abs(xs - xs.mean()) < 0.6 * xs.std())
    image[ys[v_neck], xs[v_neck]] = skin
    opening = v_neck & (ys < top + 0.75 * depth)  # labelled skin; the fringe below it stays "tee"
    labels[ys[opening], xs[opening]] = LIP["torso_skin"]
    parse = parse.model_copy(update={"labels": labels})

    def skin_pixels(rgba: np.ndarray) -> int:
        shown = rgba[..., 3] > 0
        lab = color.rgb2lab(rgba[..., :3][shown].reshape(1, -1, 3).astype(np.float64) / 255.0)[0]
        reference = np.broadcast_to(mean_lab(np.array([[skin]], np.uint8)), lab.shape)
        return int((color.deltaE_ciede2000(lab, reference) < 8.0).sum())

    before = skin_pixels(tryoff.extract(wearing_tee, pose, pipeline.person(wearing_tee)[1], "upper").rgba)
    filled = skin_pixels(tryoff.extract(image, pose, parse, "upper").rgba) - before
    monkeypatch.setattr(tryoff, "looks_like_the_wearer", lambda *args: np.zeros(args[4].shape, bool))
    sampled = skin_pixels(tryoff.extract(image, pose, parse, "upper").rgba) - before
    assert sampled > 200 and filled < 0.2 * sampled, (before, filled, sampled)


def test_a_strand_of_hair_on_the_shoulder_does_not_take_the_sleeves_off(
    wearing_tee: np.ndarray, pipeline: Pipeline
) -> None:
    """Blond hair over a shoulder is often parsed as arm skin. Where it covers the first tenth of an
    arm, the sleeve still goes on below it: the flat-lay keeps the sleeves the arms show (long: her
    suit's, under the tee). One bare tenth ended the sleeve before, and a long-sleeved top came out
    sleeveless."""
    pose, parse = pipeline.person(wearing_tee)
    body = Body(pose, parse)
    assert tryoff.sleeve_kind(body, "upper") == "long"
    chain = arm_chain(body.pts, "left")[:3]
    length = sum(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(chain))
    ys, xs = np.mgrid[0 : body.height, 0 : body.width]
    distance, arc = chain_coords(xs.astype(np.float64), ys.astype(np.float64), chain)
    strand = (distance <= 0.2 * body.frame.shoulder_width) & (arc >= 0) & (arc < 0.12 * length)
    labels = parse.labels.copy()
    labels[strand] = LIP["left_arm"]
    with_strand = Body(pose, parse.model_copy(update={"labels": labels}))
    assert tryoff.covered_shares(with_strand, "upper")[0] > tryoff.SLEEVE_SHORT
    assert tryoff.sleeve_kind(with_strand, "upper") == "long"


def test_refusals_have_their_codes(
    astronaut: np.ndarray, chelsea: np.ndarray, wearing_tee: np.ndarray, pipeline: Pipeline
) -> None:
    with pytest.raises(NoPersonDetected):
        pipeline.tryoff(chelsea, "upper")
    with pytest.raises(CategoryUnsupported):  # a half-body photo shows no knees to wear trousers on
        pipeline.tryoff(astronaut, "lower")
    pose, parse = pipeline.person(wearing_tee)
    bare = parse.labels.copy()
    bare[bare == LIP["upper_clothes"]] = LIP["torso_skin"]
    with pytest.raises(GarmentNotDetected):
        tryoff.extract(wearing_tee, pose, parse.model_copy(update={"labels": bare}), "upper")
    with pytest.raises(ModelUnavailable, match="fitroom models install CHECKPOINT --name acme-1"):
        tryoff.extract(wearing_tee, pose, parse, "upper", learned="acme-1", infer=pipeline.infer)


def test_the_layout_is_symmetric_and_fits_the_canvas() -> None:
    for category, sleeves in (("upper", "short"), ("upper", "long"), ("upper", "none"), ("dress", "short")):
        layout = tryoff.canonical_layout(category, sleeves, (600, 400))  # landscape: a 3:4 box in the middle
        marks = layout.landmarks
        for name, (x, y) in marks.items():
            assert 0 <= x < 600 and 0 <= y < 400
            if "right" in name:
                mirror = marks[name.replace("right", "left")]
                assert mirror[0] == pytest.approx(600 - x) and mirror[1] == pytest.approx(y)
        assert ("sleeve_left_outer" in marks) == (sleeves != "none")


def test_cli_tryoff_one_photo_and_a_folder(tmp_path: Path, wearing_tee: np.ndarray, chelsea: np.ndarray) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(wearing_tee).save(photos / "model.png")
    Image.fromarray(chelsea).save(photos / "cat.png")
    env = {"FITROOM_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.cli", "tryoff", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)

    single = run(
        "--person", str(photos / "model.png"), "-o", str(tmp_path / "tee.jpg"), "--debug", str(tmp_path / "dbg")
    )
    assert single.returncode == 0, single.stderr
    written = np.array(Image.open(tmp_path / "tee.jpg"))
    assert written.shape == wearing_tee.shape and written[0, 0].min() > 240  # RGB on white
    assert {p.name for p in (tmp_path / "dbg").iterdir()} == {"pose.jpg", "parse.png", "flatlay_on_white.jpg"}
    batch = run("--person-dir", str(photos), "-o", str(tmp_path / "out"))
    assert batch.returncode == 3  # the cat has no person; the batch went on
    assert np.array(Image.open(tmp_path / "out" / "model.png")).shape == (*wearing_tee.shape[:2], 4)
    assert '"no_person_detected"' in batch.stdout and "2/2" in batch.stderr
    wrong = run("--person", str(photos / "model.png"), "-o", str(tmp_path / "tee.gif"))
    assert wrong.returncode == 2 and "-o must name" in wrong.stderr
