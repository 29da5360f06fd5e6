"""The pose stage on real photos: plausible anatomy, no-person cases, OpenPose export, and
agreement with MediaPipe's own BlazePose pipeline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common.contracts import LANDMARK_INDEX, PoseResult
from services.common.errors import NoPersonDetected
from services.common.imageio import read_image_file
from services.common.inference import LocalBackend
from services.common.roi import Roi, to_image_pixels
from services.pose import blazepose as bp
from services.pose.openpose import BODY25, COCO18, to_openpose
from services.pose.stage import run


def xy(pose: PoseResult, name: str) -> np.ndarray:
    return pose.landmark_array()[LANDMARK_INDEX[name], :2]


def test_astronaut_has_plausible_anatomy(astronaut: np.ndarray, infer: LocalBackend) -> None:
    pose = run(astronaut, infer)
    assert (pose.image_width, pose.image_height) == (512, 512)
    nose, l_sh, r_sh = xy(pose, "nose"), xy(pose, "left_shoulder"), xy(pose, "right_shoulder")
    # Her face is around (230, 130) in the photo; shoulders below it, the person's left on the image right.
    assert np.linalg.norm(nose - [230, 130]) < 30
    assert l_sh[1] > nose[1] and r_sh[1] > nose[1]
    assert l_sh[0] > r_sh[0]
    assert pose.landmarks[LANDMARK_INDEX["nose"]].visibility > 0.9
    # Half-body photo: the ankles are below the frame.
    assert xy(pose, "left_ankle")[1] > 512
    # The mask covers the person and not the background corners.
    assert pose.mask.shape == (512, 512) and pose.mask.dtype == np.float32
    assert pose.mask[int(nose[1]), int(nose[0])] > 0.9
    assert pose.mask[:40, -40:].max() < 0.5
    assert pose.box.x0 < r_sh[0] < l_sh[0] < pose.box.x1


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rotated_photo_gives_the_rotated_pose(astronaut: np.ndarray, infer: LocalBackend, quarter_turns: int) -> None:
    """The ROI follows the body axis, so a rotated photo gives the same landmarks, rotated."""
    upright = run(astronaut, infer).landmark_array()[:, :2]
    rotated = run(np.ascontiguousarray(np.rot90(astronaut, k=-quarter_turns)), infer).landmark_array()[:, :2]
    back = upright.copy()
    for _ in range(quarter_turns):  # clockwise quarter turn in a 512x512 image: (x, y) -> (511 - y, x)
        back = np.stack([511 - back[:, 1], back[:, 0]], axis=1)
    # On a half-body photo the detector's ROI (from hips below the frame) differs by up to
    # 15% in size between angles, which moves the shoulders by ~20 px; allow 6% of the image.
    # A wrong rotation convention would be off by hundreds of pixels.
    head_and_shoulders = [LANDMARK_INDEX[n] for n in ("nose", "left_shoulder", "right_shoulder")]
    assert np.abs(rotated[head_and_shoulders] - back[head_and_shoulders]).max() < 0.06 * 512


def test_any_aspect_ratio(astronaut: np.ndarray, infer: LocalBackend) -> None:
    wide = cv2.copyMakeBorder(astronaut, 0, 0, 300, 300, cv2.BORDER_CONSTANT, value=(200, 200, 200))
    pose = run(wide, infer)
    assert pose.image_width == 1112 and pose.mask.shape == (512, 1112)
    np.testing.assert_allclose(xy(pose, "nose"), xy(run(astronaut, infer), "nose") + np.array([300, 0]), atol=6)


@pytest.mark.parametrize("kind", ["cat", "blank", "noise", "tiny"])
def test_no_person(kind: str, chelsea: np.ndarray, infer: LocalBackend) -> None:
    rng = np.random.default_rng(3)
    image = {
        "cat": chelsea,
        "blank": np.full((480, 640, 3), 255, np.uint8),
        "noise": rng.integers(0, 256, (512, 512, 3), dtype=np.uint8),
        "tiny": np.zeros((1, 1, 3), np.uint8),
    }[kind]
    with pytest.raises(NoPersonDetected) as info:
        run(image, infer)
    assert info.value.code == "no_person_detected"


def test_openpose_export(astronaut: np.ndarray, infer: LocalBackend) -> None:
    pose = run(astronaut, infer)
    coco, body = to_openpose(pose, "COCO18"), to_openpose(pose, "BODY25")
    assert coco.shape == (len(COCO18), 3) and body.shape == (len(BODY25), 3)
    neck = (xy(pose, "left_shoulder") + xy(pose, "right_shoulder")) / 2
    np.testing.assert_allclose(coco[1, :2], neck, atol=1e-3)
    np.testing.assert_allclose(coco[2, :2], xy(pose, "right_shoulder"), atol=1e-3)  # OpenPose 2 = right shoulder
    np.testing.assert_allclose(body[:8], coco[:8])  # the first eight joints are shared
    # Cut off at the waist: knees and ankles are missing (zeros), as is the mid-hip if a hip is.
    for joint in (9, 10, 12, 13):
        assert not coco[joint].any()
    assert not body[20].any() and not body[23].any()  # small toes: BlazePose has none
    hips_present = coco[8].any() and coco[11].any()
    assert bool(body[8].any()) == hips_present


@pytest.mark.reference
def test_agrees_with_mediapipe(astronaut: np.ndarray, infer: LocalBackend, request: pytest.FixtureRequest) -> None:
    """Mean distance of visible landmarks to mediapipe.solutions.pose: at most 0.5% of the image height."""
    mp = pytest.importorskip("mediapipe")
    images: list[tuple[str, np.ndarray]] = [("astronaut", astronaut)]
    try:
        photos: list[Path] = request.getfixturevalue("shared_person_photos")
        images += [(p.name, read_image_file(p)) for p in photos]
    except pytest.skip.Exception:
        pass
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as reference:
        for name, image in images:
            height, width = image.shape[:2]
            result = reference.process(image)
            assert result.pose_landmarks is not None, name
            ref = np.array([[p.x * width, p.y * height, p.visibility] for p in result.pose_landmarks.landmark])
            ours = run(image, infer).landmark_array()
            visible = ref[:, 2] > 0.5
            distance = np.linalg.norm(ours[visible, :2] - ref[visible, :2], axis=1).mean()
            assert distance <= 0.005 * height, f"{name}: mean distance {distance:.2f}px"
            assert np.abs(ours[:, 3] - ref[:, 2]).max() < 0.05, f"{name}: visibility differs"


def test_anchors_match_the_detector_output() -> None:
    assert bp.ANCHORS.shape == (2254, 2)
    assert bp.ANCHORS[0].tolist() == pytest.approx([0.5 / 28, 0.5 / 28])
    assert bp.ANCHORS[-1].tolist() == pytest.approx([6.5 / 7, 6.5 / 7])


def test_weighted_nms_merges_overlaps_by_score() -> None:
    kp = np.zeros((4, 2), np.float32)
    a = bp.Detection(np.array([0, 0, 1, 1], np.float32), kp, 0.9)
    b = bp.Detection(np.array([0.1, 0, 1.1, 1], np.float32), kp + 1, 0.6)
    far = bp.Detection(np.array([5, 5, 6, 6], np.float32), kp, 0.7)
    merged = bp.weighted_nms([b, far, a])
    assert [round(d.score, 2) for d in merged] == [0.9, 0.7]
    np.testing.assert_allclose(merged[0].box, [0.04, 0, 1.04, 1], atol=1e-6)  # 0.6 * 0.1 / 1.5
    np.testing.assert_allclose(merged[0].keypoints, kp + 0.4, atol=1e-6)


def test_roi_maps_its_corners_and_centre() -> None:
    roi = Roi(cx=100, cy=50, size=40, rotation=np.pi / 2)
    pts = to_image_pixels(np.array([[0.5, 0.5], [0.5, 0.0], [1.0, 0.5]]), roi)
    # A quarter turn clockwise on screen: the ROI's "up" points to the image's right.
    np.testing.assert_allclose(pts, [[100, 50], [120, 50], [100, 70]], atol=1e-9)
