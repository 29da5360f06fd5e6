"""triton_models/*/config.pbtxt: each parses with Triton's own model_config protobuf (tritonclient
ships it), names a pytorch_libtorch model, and agrees with its built model.pt: the TorchScript
model, run on zeros of the config's input shapes, returns as many outputs as the config lists,
with the config's dtypes and dims (-1 matches any size). Skips a model whose model.pt is not
built (`fitroom models build`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.common.config import PROJECT_ROOT
from services.common.model_repository import MODEL_VERSION

# The committed configs, not FITROOM_MODEL_REPOSITORY: they are what the images build from.
REPOSITORY = PROJECT_ROOT / "triton_models"
CONFIGS = sorted(REPOSITORY.glob("*/config.pbtxt"))
TORCH_DTYPES = {
    mc.TYPE_FP32: torch.float32,
    mc.TYPE_FP16: torch.float16,
    mc.TYPE_INT32: torch.int32,
    mc.TYPE_INT64: torch.int64,
    mc.TYPE_UINT8: torch.uint8,
    mc.TYPE_BOOL: torch.bool,
}
# TorchScript is what the pytorch_libtorch backend loads, deprecated in torch or not.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
# The size given to a variable (-1) dimension when the model is run.
VARIABLE_SIZE = 32


def _config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _shape(config: mc.ModelConfig, dims: list[int]) -> list[int]:
    batch = [1] if config.max_batch_size > 0 else []
    return batch + [VARIABLE_SIZE if d == -1 else d for d in dims]


def test_every_model_folder_has_a_config() -> None:
    folders = sorted(p for p in REPOSITORY.iterdir() if p.is_dir())
    assert folders
    assert [c.parent for c in CONFIGS] == folders


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_config_parses_and_names_its_folder(path: Path) -> None:
    config = _config(path)
    assert config.name == path.parent.name
    assert config.platform == "pytorch_libtorch"
    # The pytorch_libtorch backend binds tensors by position: NAME__<index>.
    for tensors in (config.input, config.output):
        assert tensors
        for index, tensor in enumerate(tensors):
            assert tensor.name.endswith(f"__{index}"), tensor.name
            assert tensor.data_type in TORCH_DTYPES


def test_a_malformed_config_is_rejected() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\ninput { nme: "a" }\n', mc.ModelConfig())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_model_matches_its_config(path: Path) -> None:
    model_path = path.parent / MODEL_VERSION / "model.pt"
    if not model_path.exists():
        pytest.skip(f"{model_path} is not built (fitroom models build)")
    config = _config(path)
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    parameters = model.forward.schema.arguments[1:]  # without self
    assert len(parameters) == len(config.input)

    inputs = [torch.zeros(_shape(config, list(t.dims)), dtype=TORCH_DTYPES[t.data_type]) for t in config.input]
    with torch.no_grad():
        result = model(*inputs)
    outputs = result if isinstance(result, tuple | list) else (result,)
    assert len(outputs) == len(config.output)
    for tensor, spec in zip(outputs, config.output, strict=True):
        assert tensor.dtype == TORCH_DTYPES[spec.data_type], spec.name
        expected = ([1] if config.max_batch_size > 0 else []) + list(spec.dims)
        actual = list(tensor.shape)
        assert len(actual) == len(expected), f"{spec.name}: {actual} vs {expected}"
        for got, want in zip(actual, expected, strict=True):
            assert want == -1 or got == want, f"{spec.name}: {actual} vs {expected}"
