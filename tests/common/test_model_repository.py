"""`fitroom models build` output: config.pbtxt agrees with model.pt, builds are cached, the
wheel's checksum is enforced, and the local backend enforces the config."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.config import Settings, get_settings
from services.common.errors import ModelUnavailable
from services.common.inference import LocalBackend, embedded_backend, native_bf16
from services.common.mediapipe_models import MODELS, POSE_DETECTION, build_model, fetch_wheel, verify_wheel
from services.common.model_repository import ModelSignature, TensorSpec, install_model, read_signature


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_config_matches_the_module(model, repository: Path) -> None:
    signature = read_signature(repository, model.name)
    assert signature.max_batch_size > 0
    config = (repository / model.name / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config and "dynamic_batching" in config
    scripted = torch.jit.load(str(repository / model.name / "1" / "model.pt"))
    batch = 2
    inputs = [torch.rand(batch, *spec.dims) for spec in signature.inputs]
    with torch.inference_mode():
        outputs = scripted(*inputs)
    assert len(outputs) == len(signature.outputs)
    for spec, out in zip(signature.outputs, outputs, strict=True):
        assert tuple(out.shape) == (batch, *spec.dims), spec.name
        assert out.dtype == torch.float32


def test_build_is_cached_and_rebuilds_when_forced(tmp_path: Path) -> None:
    wheel = fetch_wheel(get_settings().cache_dir)
    assert build_model(POSE_DETECTION, wheel, tmp_path) is True
    first = (tmp_path / "pose_detection" / "1" / "model.pt").stat().st_mtime_ns
    assert build_model(POSE_DETECTION, wheel, tmp_path) is False  # cached: nothing rewritten
    assert (tmp_path / "pose_detection" / "1" / "model.pt").stat().st_mtime_ns == first
    assert build_model(POSE_DETECTION, wheel, tmp_path, force=True) is True
    assert not list(tmp_path.rglob("*.tmp"))


def test_wheel_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(RuntimeError, match="sha256"):
        verify_wheel(fake)


def test_local_backend_runs_models_by_config_names(infer: LocalBackend) -> None:
    out = infer("pose_detection", {"image__0": np.zeros((1, 224, 224, 3), np.float32)})
    assert set(out) == {"boxes__0", "scores__1"}
    assert out["boxes__0"].shape == (1, 2254, 12)


def test_local_backend_refuses_inputs_that_break_the_config(infer: LocalBackend) -> None:
    with pytest.raises(ValueError, match="does not match dims"):
        infer("pose_detection", {"image__0": np.zeros((1, 256, 256, 3), np.float32)})
    with pytest.raises(ValueError, match="inputs"):
        infer("pose_detection", {"input": np.zeros((1, 224, 224, 3), np.float32)})


def test_missing_model_is_a_clear_error(tmp_path: Path, repository: Path) -> None:
    shutil.copytree(repository / "pose_detection", tmp_path / "pose_detection")
    (tmp_path / "pose_detection" / "1" / "model.pt").unlink()
    with pytest.raises(ModelUnavailable, match="fitroom models build") as info:
        LocalBackend(tmp_path)("pose_detection", {"image__0": np.zeros((1, 224, 224, 3), np.float32)})
    assert info.value.code == "model_unavailable"


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


@pytest.mark.parametrize("trained_in_bf16", [True, False])
def test_local_backend_runs_bf16_trained_models_in_bf16_when_asked(tmp_path: Path, trained_in_bf16: bool) -> None:
    """The learned networks, trained under bf16 autocast, may run so on a CPU that computes in
    bf16 natively (config.pbtxt says which; Triton keeps and ignores the parameter). Their outputs
    come back in fp32; every other model runs in fp32 whatever the setting."""
    signature = ModelSignature(
        "conv", (TensorSpec("image__0", (1, 3, -1, -1)),), (TensorSpec("out__0", (1, 2, -1, -1)),), 0, trained_in_bf16
    )
    torch.manual_seed(0)

    def export(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.script(_Conv().eval()).save(str(path))

    install_model(tmp_path, signature, {}, export)
    assert read_signature(tmp_path, "conv").cpu_bf16 is trained_in_bf16
    image = {"image__0": np.random.default_rng(0).random((1, 3, 32, 24), np.float32)}
    fp32 = LocalBackend(tmp_path)("conv", image)["out__0"]
    bf16 = LocalBackend(tmp_path, bf16=True)("conv", image)["out__0"]
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    if trained_in_bf16:
        assert 0 < np.abs(bf16 - fp32).max() < 0.05  # bf16's 8-bit mantissa, not another model
    else:
        assert np.array_equal(bf16, fp32)


@pytest.mark.parametrize(("setting", "expected"), [("on", True), ("off", False), ("auto", native_bf16())])
def test_embedded_backend_takes_bf16_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, setting: str, expected: bool
) -> None:
    monkeypatch.setenv("FITROOM_CPU_BF16", setting)
    assert embedded_backend(Settings()).bf16 is expected
