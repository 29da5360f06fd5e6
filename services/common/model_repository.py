"""The Triton model repository: `triton_models/<name>/config.pbtxt` and `1/model.pt`.

config.pbtxt is read and written with Triton's own protobuf schema (tritonclient ships it),
so what the local backend checks is exactly what Triton will enforce.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

MODEL_VERSION = "1"
_TYPE_TO_NUMPY = {
    mc.TYPE_FP32: np.float32,
    mc.TYPE_FP16: np.float16,
    mc.TYPE_INT32: np.int32,
    mc.TYPE_INT64: np.int64,
    mc.TYPE_UINT8: np.uint8,
    mc.TYPE_BOOL: np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    dtype: type = np.float32


# config.pbtxt's parameter (Triton keeps and ignores it) saying that the model was trained under
# bf16 autocast, so the local backend may run it so on a CPU that computes in bf16 natively.
CPU_BF16 = "fitroom_cpu_bf16"


@dataclass(frozen=True)
class ModelSignature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    cpu_bf16: bool = False


def model_dir(repository: Path, name: str) -> Path:
    return repository / name


def model_file(repository: Path, name: str) -> Path:
    return repository / name / MODEL_VERSION / "model.pt"


def config_text(signature: ModelSignature, max_queue_delay_us: int = 2000) -> str:
    """config.pbtxt for a TorchScript model served by Triton's pytorch_libtorch backend."""
    numpy_to_type = {v: k for k, v in _TYPE_TO_NUMPY.items()}
    config = mc.ModelConfig(name=signature.name, platform="pytorch_libtorch", max_batch_size=signature.max_batch_size)
    for spec, target in [(s, config.input) for s in signature.inputs] + [(s, config.output) for s in signature.outputs]:
        target.add(name=spec.name, data_type=numpy_to_type[spec.dtype], dims=list(spec.dims))
    if signature.max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if signature.cpu_bf16:
        config.parameters[CPU_BF16].string_value = "true"
    return text_format.MessageToString(config)


def read_signature(repository: Path, name: str) -> ModelSignature:
    """Parse triton_models/<name>/config.pbtxt into the names, dims and types of the model."""
    path = model_dir(repository, name) / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())

    def specs(tensors: object) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, tuple(t.dims), _TYPE_TO_NUMPY[t.data_type]) for t in tensors)

    cpu_bf16 = CPU_BF16 in config.parameters and config.parameters[CPU_BF16].string_value == "true"
    return ModelSignature(
        config.name or name, specs(config.input), specs(config.output), config.max_batch_size, cpu_bf16
    )


def install_model(
    repository: Path, signature: ModelSignature, source: dict, export: Callable[[Path], object], force: bool = False
) -> bool:
    """Write config.pbtxt and 1/model.pt (via `export(path)`) unless the installed model was
    built from the same `source` (recorded in 1/source.json). Returns True when it (re)built.
    model.pt is written to a temporary file and renamed: never a half-written model."""
    target = model_file(repository, signature.name)
    stamp = target.parent / "source.json"
    config_path = model_dir(repository, signature.name) / "config.pbtxt"
    config = config_text(signature)
    current = (
        config_path.exists()
        and config_path.read_text() == config
        and target.exists()
        and stamp.exists()
        and json.loads(stamp.read_text()) == source
    )
    if current and not force:
        return False
    tmp = target.with_suffix(".pt.tmp")
    export(tmp)
    tmp.replace(target)
    config_path.write_text(config)
    stamp.write_text(json.dumps(source, indent=2) + "\n")
    return True
