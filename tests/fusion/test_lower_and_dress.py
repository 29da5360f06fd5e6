"""Lower garments and dresses on the full-body persons of ../shared/data/photos, checked by
parsing the output (issue 18): the old lower garment or dress is repainted wherever the new one
lies, the legs a short garment leaves bare are legs (or the person's own shoes and socks), never
the old trousers, and the face, hands and kept top are as they were."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.artifacts import LocalArtifactStore
from services.common.contracts import LANDMARK_INDEX, LIP, Category
from services.common.errors import CategoryUnsupported
from services.common.imageio import read_image_file
from services.common.inference import LocalBackend
from services.parser import stage as parser_stage
from services.parser.agnostic import any_of
from services.parser.geometry import BodyFrame
from services.pipeline import Pipeline
from tests.conftest import SHARED_DATA
from tests.warp.drawn import CATALOGUE, product_image

PHOTOS = SHARED_DATA / "photos"
OLD_LOWER = (LIP["pants"], LIP["skirt"], LIP["dress"])
TOP = (LIP["upper_clothes"], LIP["coat"])
BARE_LEG = (LIP["left_leg"], LIP["right_leg"], LIP["socks"], LIP["left_shoe"], LIP["right_shoe"])
UNCHANGED = 8  # of 255, per channel: a pixel this close to the photo's is the photo's
MAX_OLD_SHARE = 0.02  # of the new garment's pixels, still the old lower garment (issue 18)
SHADING = (0.4, 1.7)  # the light fusion may put on a garment (its shading range, with some slack)
SHADE_RESIDUAL = 24  # of 255: off a shade of the new garment by at most this, it is the new garment
# A short garment ends above the knees: of the old trousers below its hem, the share that may still
# parse as trousers in the output (the parser's own error on bare legs is about this much).
MAX_OLD_TROUSERS_BELOW = 0.05


def full_body_persons() -> list[str]:
    if not PHOTOS.is_dir():
        return ["(no shared data)"]
    return sorted(p.name for p in (PHOTOS / "person").iterdir())


def garments() -> dict[str, tuple[np.ndarray, Category]]:
    """../shared's trousers and dress, and the drawn shorts, mini skirt and long dress."""
    found = {
        name: (product_image(*CATALOGUE[name][:2]), CATALOGUE[name][2])
        for name in ("shorts", "mini skirt", "long dress")
    }
    if PHOTOS.is_dir():
        found["trousers"] = (read_image_file(PHOTOS / "garment" / "dresscode_lower_051412_1.jpg", rgba=True), "lower")
        found["dress"] = (read_image_file(PHOTOS / "garment" / "dresscode_dress_051998_1.jpg", rgba=True), "dress")
    return found


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, infer: LocalBackend) -> Pipeline:
    return Pipeline(LocalArtifactStore(tmp_path_factory.mktemp("lower")), infer)


def unchanged(result: np.ndarray, photo: np.ndarray) -> np.ndarray:
    return np.abs(result.astype(int) - photo.astype(int)).max(axis=2) <= UNCHANGED


def shade_of(result: np.ndarray, garment: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """HxW bool: where the try-on is the new garment's colour (`garment`, floats in [0, 1]) under
    some light (a factor in fusion's shading range), or at least nearer it than the photo's."""
    out, new = result.astype(np.float32), garment.astype(np.float32) * 255
    light = np.clip((out * new).sum(axis=2) / np.maximum((new * new).sum(axis=2), 1.0), *SHADING)
    residual = np.abs(out - light[..., None] * new).max(axis=2)
    nearer_new = residual < np.abs(out - photo.astype(np.float32)).max(axis=2)
    return (residual <= SHADE_RESIDUAL) | nearer_new


@pytest.mark.parametrize("person_name", full_body_persons())
def test_lower_and_dress_repaint_the_old_garment_and_keep_the_rest(
    person_name: str, pipeline: Pipeline, infer: LocalBackend
) -> None:
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    photo = read_image_file(PHOTOS / "person" / person_name)
    pose, before = pipeline.person(photo)
    pts = pose.landmark_array()[:, :2]
    frame = BodyFrame.from_points(pts)
    ys, xs = np.mgrid[0 : photo.shape[0], 0 : photo.shape[1]]
    t = frame.coords(xs.astype(np.float32), ys.astype(np.float32))[0]
    old_lower = any_of(before.labels, OLD_LOWER) & (t > 1.0)  # a dress's skirt, not its bodice
    problems = []
    tried = 0
    for name, (garment, category) in garments().items():
        try:
            result = pipeline.tryon(photo, garment, category)
        except CategoryUnsupported:  # no knees in the photo: a half-body shot
            pytest.skip(f"{person_name} shows no knees")
        tried += 1
        case = f"{person_name} + {name}"
        after = parser_stage.run(result.image, pose, infer)
        same = unchanged(result.image, photo)
        new = result.warped.rgba[..., 3] > 0.5
        # Where the new garment lies, nothing of the old lower garment is left: neither as it was
        # nor showing through (a colour that is no shade of the new garment's and nearer the photo's).
        old_left = (new & old_lower & (same | ~shade_of(result.image, result.warped.rgba[..., :3], photo))).sum()
        old_left /= max(int(new.sum()), 1)
        if old_left > MAX_OLD_SHARE:
            problems.append(f"{case}: {old_left:.1%} of the new garment is still the old one")
        # Below a short garment's hem, the old trousers or skirt are gone: legs, shoes or backdrop.
        hem_t = float(np.percentile(t[new], 99)) if new.any() else 0.0
        below = old_lower & ~new & (t > hem_t + 0.05)
        if below.sum() > 2000:
            still = (any_of(after.labels, OLD_LOWER) & below & same).sum() / below.sum()
            if still > MAX_OLD_TROUSERS_BELOW:
                problems.append(f"{case}: {still:.0%} of the legs below the hem are still the old garment")
        # The face and hands, and for a lower garment the kept top above the waist, are as they were.
        face = before.labels == LIP["face"]
        if face.sum() > 500 and same[face].mean() < 0.97:
            problems.append(f"{case}: {1 - same[face].mean():.0%} of the face changed")
        for side in ("left", "right"):
            x, y = pts[LANDMARK_INDEX[f"{side}_index"]].round().astype(int)
            inside = 3 <= y < photo.shape[0] - 3 and 3 <= x < photo.shape[1] - 3
            on_arm = inside and before.labels[y, x] in (LIP["left_arm"], LIP["right_arm"])
            if on_arm and not same[y - 3 : y + 4, x - 3 : x + 4].all():
                problems.append(f"{case}: {side} hand repainted")
        if category == "lower":
            top = any_of(before.labels, TOP) & (t < 0.6)  # well above any waistband
            if top.sum() > 500 and same[top].mean() < 0.97:
                problems.append(f"{case}: {1 - same[top].mean():.0%} of the top changed")
    assert tried, "no garment was tried"
    assert not problems, "\n".join(problems)
