"""The TFLite importer: its layers against TFLite's definitions, and every imported model
against the original .tflite run by the ai-edge-litert runtime on the same inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from services.common.config import get_settings
from services.common.mediapipe_models import MODELS, MediaPipeModel, fetch_wheel, read_tflite
from services.common.roi import crop
from services.common.tflite_import import (
    DepthToSpace,
    LegacyResizeBilinear,
    SameAvgPool2d,
    TFLiteGraph,
    _same_pads,
)
from services.pose import blazepose as bp

# --------------------------------------------------------------------------- layers


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert _same_pads(224, 3, 2) == (0, 1)  # TFLite: extra pixel at the bottom/right
    assert _same_pads(112, 3, 1) == (1, 1)
    assert _same_pads(8, 2, 2) == (0, 0)
    assert _same_pads(7, 5, 2) == (2, 2)


def test_legacy_resize_matches_tflite_formula() -> None:
    rng = np.random.default_rng(0)
    src = rng.random((1, 3, 5, 7), dtype=np.float32)
    out_h, out_w = 8, 10
    expected = np.zeros((1, 3, out_h, out_w), dtype=np.float32)
    for i in range(out_h):  # TFLite legacy: in = out * scale, no half-pixel offset, clamp at the edge
        y = i * 5 / out_h
        y0, fy = int(np.floor(y)), y - np.floor(y)
        for j in range(out_w):
            x = j * 7 / out_w
            x0, fx = int(np.floor(x)), x - np.floor(x)
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            top = src[..., y0, x0] * (1 - fx) + src[..., y0, x1] * fx
            bottom = src[..., y1, x0] * (1 - fx) + src[..., y1, x1] * fx
            expected[..., i, j] = top * (1 - fy) + bottom * fy
    got = LegacyResizeBilinear((5, 7), (out_h, out_w))(torch.from_numpy(src)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_depth_to_space_uses_tflite_channel_order() -> None:
    block, n, h, w, c = 2, 1, 3, 4, 5
    nhwc = np.arange(n * h * w * c * block * block, dtype=np.float32).reshape(n, h, w, block * block * c)
    # TFLite: depth index = (by * block + bx) * C + c
    expected = nhwc.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c)
    got = DepthToSpace(block)(torch.from_numpy(nhwc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


def test_same_average_pool_leaves_padding_out_of_the_mean() -> None:
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    pads = [*_same_pads(5, 2, 2), *_same_pads(5, 2, 2)]
    got = SameAvgPool2d((2, 2), (2, 2), pads, (5, 5))(x)
    assert got.shape == (1, 1, 3, 3)
    assert got[0, 0, 2, 2].item() == 24.0  # the corner cell averages the one real pixel
    assert got[0, 0, 0, 2].item() == pytest.approx((4 + 9) / 2)
    assert got[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 5 + 6) / 4)


# --------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module")
def wheel() -> Path:
    return fetch_wheel(get_settings().cache_dir)


def test_imported_module_is_built_of_real_layers(repository: Path, wheel: Path) -> None:
    from services.common.tflite_import import import_tflite

    data = read_tflite(wheel, MODELS[0])
    graph = TFLiteGraph(data)
    convs = sum(op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in graph.operators)
    module = import_tflite(data, ["image"], list(MODELS[0].output_names))
    assert sum(isinstance(m, nn.Conv2d) for m in module.modules()) == convs
    assert "DENSIFY" not in {op.kind for op in graph.operators}  # folded into dense weights
    assert "conv" in module.code


def _real_input(model: MediaPipeModel, image: np.ndarray) -> np.ndarray:
    """A real photo prepared as each model's own pipeline prepares it."""
    height, width = image.shape[:2]
    if model.name == "pose_detection":
        pixels = crop(image, bp.letterbox_roi(width, height), 224, cv2.BORDER_CONSTANT)
        return pixels.astype(np.float32) * (2 / 255) - 1
    if model.name == "face_landmark":
        return cv2.resize(image[30:200, 130:300], (192, 192)).astype(np.float32) / 255
    return cv2.resize(image, (256, 256)).astype(np.float32) / 255


# Parity budgets of the issue: landmarks 0.01 px at the model's input scale, scores 1e-4,
# segmentation logits 1e-3 relative to their range. Raw logits are compared after the sigmoid
# that the pipeline applies, since that is what the scores are.
def _check(model: str, output: str, ref: np.ndarray, got: np.ndarray) -> None:
    err = float(np.abs(ref - got).max())
    if output in ("scores__1", "presence__1", "face_flag__1", "mask__0"):
        sig = lambda v: 1 / (1 + np.exp(-np.clip(v, -80, 80)))  # noqa: E731
        if output in ("scores__1", "face_flag__1"):
            ref, got = sig(ref), sig(got)
        assert np.abs(ref - got).max() <= 1e-4, f"{model}.{output}: score error {err}"
    elif output in ("segmentation__2", "heatmap__3"):
        assert err / np.abs(ref).max() <= 1e-3, f"{model}.{output}: relative error {err / np.abs(ref).max()}"
    else:  # landmarks and boxes in input pixels, world landmarks in metres
        assert err <= 0.01, f"{model}.{output}: max abs error {err}"


@pytest.mark.reference
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_model_matches_tflite_runtime(
    model: MediaPipeModel, repository: Path, wheel: Path, astronaut: np.ndarray
) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_content=read_tflite(wheel, model))
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    scripted = torch.jit.load(str(repository / model.name / "1" / "model.pt"))
    rng = np.random.default_rng(7)
    shape = tuple(input_detail["shape"])
    inputs = [
        rng.random(shape, dtype=np.float32),
        rng.random(shape, dtype=np.float32),
        _real_input(model, astronaut)[None],
    ]
    for x in inputs:
        interpreter.set_tensor(input_detail["index"], x)
        interpreter.invoke()
        with torch.inference_mode():
            outputs = scripted(torch.from_numpy(x))
        for detail, name, got in zip(interpreter.get_output_details(), model.output_names, outputs, strict=True):
            ref = interpreter.get_tensor(detail["index"])
            assert got.shape == ref.shape, f"{model.name}.{name}: {tuple(got.shape)} != {ref.shape}"
            _check(model.name, name, ref, got.numpy())


def test_batched_input_gives_the_same_answers(repository: Path, astronaut: np.ndarray) -> None:
    """TFLite's batch is fixed at 1; ours is free, for Triton's dynamic batching."""
    scripted = torch.jit.load(str(repository / "pose_landmark_full" / "1" / "model.pt"))
    one = torch.from_numpy(cv2.resize(astronaut, (256, 256)).astype(np.float32)[None] / 255)
    batch = torch.cat([one, torch.flip(one, dims=[2])])
    with torch.inference_mode():
        single, batched = scripted(one), scripted(batch)
    for a, b in zip(single, batched, strict=True):
        np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), rtol=1e-4, atol=1e-3)
