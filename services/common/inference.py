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

import numpy as np
import torch

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


class LocalBackend:
    """In-process TorchScript execution of the model repository, models loaded once and shared.

    On the CPU the frozen graph is further rewritten by torch.jit.optimize_for_inference
    (conv + bias + activation fusion, MKLDNN layouts); that rewrite happens here at load time
    and not in model.pt, which must stay device-neutral for Triton.
    """

    def __init__(self, repository: Path, threads: int = 0, optimize: bool = True) -> None:
        self.repository = Path(repository)
        self.optimize = optimize
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

    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        signature, module = self.load(model)
        check_inputs(signature, inputs)
        args = [
            torch.from_numpy(np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)) for spec in signature.inputs
        ]
        with torch.inference_mode():
            outputs = module(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {spec.name: out.numpy() for spec, out in zip(signature.outputs, outputs, strict=True)}
