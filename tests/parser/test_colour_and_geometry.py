"""The parser's building blocks: colour models and body geometry, on controlled inputs."""

from __future__ import annotations

import numpy as np

from services.common.contracts import LANDMARK_INDEX
from services.parser import colour
from services.parser.geometry import BodyFrame, segment_distance
from services.parser.stage import guided_filter


def test_colour_model_separates_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    red = rng.normal([50, 60, 40], 3, (500, 3)).astype(np.float32)
    blue = rng.normal([40, 10, -50], 3, (500, 3)).astype(np.float32)
    model = colour.fit(np.concatenate([red, blue]), 2, np.array([1.0, 1.0, 1.0]))
    again = colour.fit(np.concatenate([red, blue]), 2, np.array([1.0, 1.0, 1.0]))
    assert model is not None and again is not None
    np.testing.assert_array_equal(model.means, again.means)  # no dependence on a global RNG
    green = np.array([[60, -60, 50]], np.float32)
    assert model.nll(green)[0] > model.nll(red[:1])[0] + 100
    # The matrix form equals the direct definition.
    diff = red[:, None, :] - model.means[None]
    direct = (0.5 * (diff * diff * model.inv_var[None]).sum(axis=2) + model.log_norm[None]).min(axis=1)
    np.testing.assert_allclose(model.nll(red), direct, rtol=1e-4, atol=1e-3)


def test_colour_model_needs_samples() -> None:
    assert colour.fit(np.zeros((3, 3), np.float32), 2, np.ones(3)) is None


def test_body_frame_measures_along_the_torso() -> None:
    pts = np.zeros((33, 2), np.float32)
    pts[LANDMARK_INDEX["left_shoulder"]] = (120, 100)
    pts[LANDMARK_INDEX["right_shoulder"]] = (80, 100)
    pts[LANDMARK_INDEX["left_hip"]] = (115, 200)
    pts[LANDMARK_INDEX["right_hip"]] = (85, 200)
    frame = BodyFrame.from_points(pts)
    t, across = frame.coords(np.array([100.0, 100.0, 150.0]), np.array([100.0, 250.0, 150.0]))
    np.testing.assert_allclose(t, [0.0, 1.5, 0.5], atol=1e-6)
    assert abs(across[0]) < 1e-6 and abs(across[2]) == 0.5
    assert frame.shoulder_width == 40


def test_segment_distance() -> None:
    d = segment_distance(
        np.array([0.0, 5.0, 15.0]), np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0]), np.array([10.0, 0.0])
    )
    np.testing.assert_allclose(d, [3.0, 0.0, 5.0])


def test_guided_filter_keeps_edges_of_the_guide() -> None:
    guide = np.zeros((20, 20), np.float32)
    guide[:, 10:] = 1.0  # a sharp edge in the photo
    labels = np.zeros((20, 20, 1), np.float32)
    labels[:, 8:] = 1.0  # a label boundary two pixels off the edge
    out = guided_filter(guide, labels, radius=3, eps=1e-4)[..., 0]
    assert out[:, 10:].min() > 0.95 and out[:, :3].max() < 0.05
    # The soft label jumps where the photo does (a plain blur would ramp across it), and the
    # pixels left of the edge fall below one half: the boundary moves to the photo's edge.
    assert out[10, 10] - out[10, 9] > 0.3
    assert out[10, 8] < 0.5
