"""Every model of the repository must run wherever Triton puts it, and load in Triton's libtorch.

- A tensor a model creates with no device lands on the CPU, and the model then fails on a GPU node
  ("Expected all tensors to be on the same device"). That only shows on a GPU, so the graph is
  checked here: every tensor-creating op takes its device from an input, never None.
- A model built with this project's torch (2.13) is loaded by the libtorch of the Triton image
  (24.10: PyTorch 2.5). An op newer than that fails the load ("Unknown builtin op"); scripting
  F.interpolate once pulled in aten::_upsample_lanczos2d_aa that way. So the ops are checked
  against the set below, every one of which libtorch 2.5 has; a new op must be checked against
  Triton's libtorch before it is added.
bench/gpu_models.py runs the models on a real GPU (an H100: every model loads and runs).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.common.model_repository import model_file
from services.fusion import model as fusion_model
from services.fusion import tom
from services.warp import gmm, tryoff_net
from services.warp import model as warp_model
from tests.triton_server import repository_models

# Tensor factories; in TorchScript IR their `device` argument is the second-to-last input.
FACTORIES = {
    "aten::zeros",
    "aten::ones",
    "aten::full",
    "aten::empty",
    "aten::arange",
    "aten::linspace",
    "aten::rand",
    "aten::randn",
    "aten::eye",
    "aten::tensor",
    "aten::scalar_tensor",
}


# Every torch op the models' serialized code calls (what libtorch compiles when it loads the file),
# each present in libtorch 2.5, Triton 24.10's pytorch backend.
PORTABLE_OPS = {
    *("__and__", "__contains__", "__derive_index", "__is__", "__not__", "__range_length", "abs", "add", "all"),
    *("any", "append", "arange", "avg_pool2d", "bitwise_or", "cat", "clamp", "clamp_", "clamp_min", "contiguous"),
    *("conv2d", "conv_transpose2d", "copy_", "dim", "div", "eq", "exp", "expand_as", "flatten", "floordiv"),
    *("format", "full_like", "grid_sampler", "gt", "hardswish", "le", "len", "linspace", "list", "log", "lt"),
    *("matmul", "max_pool2d", "meshgrid", "mul", "ne", "neg", "nonzero", "numel", "pad", "permute", "pow"),
    *("prelu", "relu", "repeat", "reshape", "select", "sigmoid", "size", "slice", "stack", "sub", "sum"),
    *("unsqueeze", "upsample_bilinear2d", "view", "warn", "where", "zeros"),
    *("adaptive_avg_pool2d", "group_norm", "pop", "remainder", "round", "silu", "silu_"),  # the learned U-Nets
    *("expand", "tanh"),  # warp_gmm's identity grid and bounded flow; tryon_generator's layers
    *("max", "min"),  # garment_warp's crop of the garment image: reductions as old as sum and abs
    *("flip",),  # the learned generators served averaged with their mirror image
    *("linear", "mean", "softmax"),  # tryoff_generator's shape prior: pooled, a linear choice, its softmax
}
_TORCH_CALL = re.compile(rb"\btorch\.(\w+)\(")


def serialized_ops(model_path: Path) -> set[str]:
    """The torch ops named in a TorchScript archive's code, in every branch (libtorch compiles them all)."""
    with zipfile.ZipFile(model_path) as archive:
        code = b"".join(archive.read(name) for name in archive.namelist() if name.endswith(".py"))
    return {name.decode() for name in _TORCH_CALL.findall(code)}


def nodes(block: torch._C.Block | torch._C.Graph) -> Iterator[torch._C.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from nodes(inner)


def deviceless_factories(module: torch.jit.ScriptModule) -> list[str]:
    found = []
    for node in nodes(module.inlined_graph):
        if node.kind() not in FACTORIES:
            continue
        device = list(node.inputs())[-2].node()
        if device.kind() == "prim::Constant" and device.output().type().kind() == "NoneType":
            found.append(f"{node.kind()} at {node.sourceRange().splitlines()[0] if node.sourceRange() else '?'}")
    return found


@pytest.mark.parametrize("name", repository_models(Path(__file__).resolve().parents[2] / "triton_models"))
def test_built_models_create_no_tensor_on_a_fixed_device(repository: Path, name: str) -> None:
    module = torch.jit.load(str(model_file(repository, name)), map_location="cpu")
    assert deviceless_factories(module) == [], name


@pytest.mark.parametrize("name", repository_models(Path(__file__).resolve().parents[2] / "triton_models"))
def test_built_models_use_only_ops_tritons_libtorch_has(repository: Path, name: str) -> None:
    assert serialized_ops(model_file(repository, name)) <= PORTABLE_OPS, sorted(
        serialized_ops(model_file(repository, name)) - PORTABLE_OPS
    )


@pytest.mark.parametrize("network", [gmm.WarpGMM, tom.TryonGenerator, tryoff_net.TryoffGenerator])
def test_the_learned_path_is_portable_too(tmp_path: Path, network: type[torch.nn.Module]) -> None:
    """warp_gmm, tryon_generator and tryoff_generator are installed from checkpoints (`fitroom models install`),
    not by `models build`, so their source is checked, as installed (averaged with the mirror image)."""
    served = network()
    if hasattr(served, "mirror_average"):
        served.mirror_average = True
    scripted = torch.jit.script(served)
    scripted.save(str(tmp_path / "learned.pt"))
    assert serialized_ops(tmp_path / "learned.pt") <= PORTABLE_OPS, sorted(
        serialized_ops(tmp_path / "learned.pt") - PORTABLE_OPS
    )
    assert deviceless_factories(scripted) == []


def test_scripting_f_interpolate_would_be_caught(tmp_path: Path) -> None:
    """The way it went wrong once: F.interpolate's Python body, all its modes, goes into the file."""

    class Resize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, size=[4, 4], mode="bilinear", align_corners=False)

    torch.jit.script(Resize()).save(str(tmp_path / "resize.pt"))
    assert "_upsample_lanczos2d_aa" in serialized_ops(tmp_path / "resize.pt") - PORTABLE_OPS


def test_the_check_finds_a_tensor_made_without_a_device() -> None:
    class Careless(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.zeros(x.shape[0])

    class Careful(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.zeros(x.shape[0], device=x.device)

    assert deviceless_factories(torch.jit.script(Careless())) != []
    assert deviceless_factories(torch.jit.script(Careful())) == []
    # The sources of our own models pass too (the built files may be older than the sources).
    assert deviceless_factories(torch.jit.script(warp_model.GarmentWarp())) == []
    assert deviceless_factories(torch.jit.script(fusion_model.TryonFusion())) == []
