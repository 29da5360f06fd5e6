"""`fitroom models build` output: config.pbtxt agrees with model.pt, builds are cached, the
wheel's checksum is enforced, and the local backend enforces the config."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.config import get_settings
from services.common.errors import ModelUnavailable
from services.common.inference import LocalBackend
from services.common.mediapipe_models import MODELS, POSE_DETECTION, build_model, fetch_wheel, verify_wheel
from services.common.model_repository import read_signature


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
