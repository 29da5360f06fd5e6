"""The one interface stages use to run models: `infer(model_name, {input: array}) -> {output: array}`.

`LocalBackend` runs triton_models/<name>/1/model.pt in-process with TorchScript (the
embedded default); a Triton backend implements the same call over the network. Input and
output names, dims and types come from config.pbtxt in both cases.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from services.common.config import Settings, get_settings
from services.common.errors import ModelUnavailable
from services.common.model_repository import ModelSignature, model_file, read_signature


class Infer(Protocol):
    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_inputs(signature: ModelSignature, inputs: Mapping[str, np.ndarray]) -> None:
    """Refuse inputs whose names or shapes differ from config.pbtxt (a bug in the caller)."""
    expected = {spec.name: spec for spec in signature.inputs}
    if set(inputs) != set(expected):
        raise ValueError(f"{signature.name}: inputs {sorted(inputs)} != config {sorted(expected)}")
    batched = signature.max_batch_size > 0
    for name, array in inputs.items():
        dims = array.shape[1:] if batched else array.shape
        spec_dims = expected[name].dims
        if len(dims) != len(spec_dims) or any(d != s and s != -1 for d, s in zip(dims, spec_dims, strict=True)):
            raise ValueError(f"{signature.name}.{name}: shape {array.shape} does not match dims {spec_dims}")
        if batched and array.shape[0] > signature.max_batch_size:
            raise ValueError(f"{signature.name}.{name}: batch {array.shape[0]} > max_batch_size")


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX). Elsewhere torch emulates
    bf16, several times slower than fp32."""
    try:  # oneDNN's own check also says yes where it only emulates the instructions
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


class LocalBackend:
    """In-process TorchScript execution of the model repository, models loaded once and shared.

    `optimize=True` rewrites the frozen graph with torch.jit.optimize_for_inference (MKLDNN
    layouts, conv + activation fusion) at load time, never in model.pt, which must stay
    device-neutral for Triton. It is off by default: on these small depthwise networks the
    layout conversions it inserts cost more than the fusion saves (bench/pose_speed.py).

    `bf16=True` runs the models whose config says they were trained under bf16 autocast
    (`ModelSignature.cpu_bf16`: the learned networks) under it too; their outputs come back in
    fp32. For a CPU that computes in bf16 natively (`native_bf16`); the settings decide.
    """

    def __init__(self, repository: Path, threads: int = 0, optimize: bool = False, bf16: bool = False) -> None:
        self.repository = Path(repository)
        self.optimize = optimize
        self.bf16 = bf16
        self._models: dict[str, tuple[ModelSignature, torch.jit.ScriptModule]] = {}
        self._lock = threading.Lock()
        if threads > 0:
            torch.set_num_threads(threads)

    def load(self, name: str) -> tuple[ModelSignature, torch.jit.ScriptModule]:
        with self._lock:
            if name not in self._models:
                path = model_file(self.repository, name)
                try:
                    signature = read_signature(self.repository, name)
                    module = torch.jit.load(str(path), map_location="cpu").eval()
                except (OSError, RuntimeError, ValueError) as exc:
                    raise ModelUnavailable(
                        f"model {name!r} cannot be loaded from {path} ({exc.__class__.__name__}); "
                        "run `fitroom models build`"
                    ) from exc
                if self.optimize:
                    with warnings.catch_warnings():  # TorchScript's deprecation notice; Triton still needs it
                        warnings.simplefilter("ignore", category=DeprecationWarning)
                        module = torch.jit.optimize_for_inference(module)
                self._models[name] = (signature, module)
            return self._models[name]

    def runs_bf16(self, model: str) -> bool:
        """Whether `model` runs under bf16 autocast here (a model installed before its config
        carried the flag runs in fp32 until it is installed again)."""
        return self.bf16 and self.load(model)[0].cpu_bf16

    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        signature, module = self.load(model)
        check_inputs(signature, inputs)
        args = [
            torch.from_numpy(np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)) for spec in signature.inputs
        ]
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.runs_bf16(model)):
            outputs = module(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {
            spec.name: out.to(torch.float32 if out.dtype == torch.bfloat16 else out.dtype).numpy()
            for spec, out in zip(signature.outputs, outputs, strict=True)
        }


def embedded_backend(settings: Settings | None = None) -> LocalBackend:
    """The embedded mode's backend, with the process's CPU threads set from the settings.

    OpenCV gets its own thread count (default 1): its pool and torch's OpenMP threads
    otherwise contend for the same cores between the crops and the model calls.
    """
    settings = settings or get_settings()
    cv2.setNumThreads(settings.opencv_threads)
    bf16 = settings.cpu_bf16 == "on" or (settings.cpu_bf16 == "auto" and native_bf16())
    return LocalBackend(settings.model_repository, threads=settings.torch_threads, bf16=bf16)


def inference_backend(settings: Settings | None = None) -> Infer:
    """The backend FITROOM_INFERENCE names: in-process TorchScript (default) or Triton."""
    settings = settings or get_settings()
    if settings.inference == "triton":
        from services.common.triton_backend import TritonBackend  # tritonclient only when used

        return TritonBackend.from_settings(settings)
    return embedded_backend(settings)
