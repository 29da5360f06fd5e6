"""`fitroom models build`: the Apache-2.0 MediaPipe models, imported into triton_models/.

The .tflite files come from the mediapipe 0.10.21 wheel, fetched with `pip download
--no-deps` and checked against its sha256; nothing else of mediapipe is used or installed.
The build is idempotent: a model is rebuilt only when its source file or the importer
changed, as recorded in 1/source.json next to model.pt.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.artifacts import sha256_hex
from services.common.model_repository import ModelSignature, TensorSpec, install_model
from services.common.tflite_import import TFLiteGraph, export_torchscript, import_tflite

log = logging.getLogger(__name__)

MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"
# The .tflite files are the same in every platform's wheel; one pinned file keeps the
# checksum meaningful on any build host.
MEDIAPIPE_WHEEL = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
MEDIAPIPE_WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
# Bump when the importer's output changes, so that cached models are rebuilt.
IMPORTER_VERSION = 2
MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class MediaPipeModel:
    name: str  # folder in triton_models/
    wheel_path: str  # path of the .tflite inside the wheel
    input_name: str
    output_names: tuple[str, ...]  # in the order of the .tflite's outputs


# Triton's libtorch backend binds tensors by position when names follow `<name>__<index>`.
POSE_DETECTION = MediaPipeModel(
    "pose_detection", "mediapipe/modules/pose_detection/pose_detection.tflite", "image__0", ("boxes__0", "scores__1")
)
POSE_LANDMARK = MediaPipeModel(
    "pose_landmark_full",
    "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
    "image__0",
    ("landmarks__0", "presence__1", "segmentation__2", "heatmap__3", "world_landmarks__4"),
)
SELFIE_SEGMENTATION = MediaPipeModel(
    "selfie_segmentation", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", "image__0", ("mask__0",)
)
FACE_LANDMARK = MediaPipeModel(
    "face_landmark",
    "mediapipe/modules/face_landmark/face_landmark.tflite",
    "image__0",
    ("landmarks__0", "face_flag__1"),
)

MODELS = (POSE_DETECTION, POSE_LANDMARK, SELFIE_SEGMENTATION, FACE_LANDMARK)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache_dir: Path) -> Path:
    """The pinned mediapipe wheel, downloaded once into the cache and checksum-verified."""
    wheel = cache_dir / MEDIAPIPE_WHEEL
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "-d",
            str(cache_dir),
            MEDIAPIPE_REQUIREMENT,
        ]
        log.info("downloading %s", MEDIAPIPE_REQUIREMENT)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return verify_wheel(wheel)


def verify_wheel(wheel: Path) -> Path:
    actual = sha256_file(wheel)
    if actual != MEDIAPIPE_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {actual} != expected {MEDIAPIPE_WHEEL_SHA256}; delete it and rebuild")
    return wheel


def read_tflite(wheel: Path, model: MediaPipeModel) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(model.wheel_path)


def signature_of(model: MediaPipeModel, data: bytes) -> ModelSignature:
    graph = TFLiteGraph(data)

    def dims(index: int) -> tuple[int, ...]:
        return graph.tensors[index].shape[1:]  # drop TFLite's batch of 1

    (input_index,) = graph.inputs
    return ModelSignature(
        model.name,
        (TensorSpec(model.input_name, dims(input_index), np.float32),),
        tuple(TensorSpec(n, dims(i), np.float32) for n, i in zip(model.output_names, graph.outputs, strict=True)),
        MAX_BATCH_SIZE,
    )


def build_model(model: MediaPipeModel, wheel: Path, repository: Path, force: bool = False) -> bool:
    """Import one model into the repository. Returns False when the cached build is current."""
    data = read_tflite(wheel, model)
    source = {
        "wheel": MEDIAPIPE_WHEEL,
        "wheel_sha256": MEDIAPIPE_WHEEL_SHA256,
        "tflite": model.wheel_path,
        "tflite_sha256": sha256_hex(data),
        "importer_version": IMPORTER_VERSION,
    }

    def export(path: Path) -> None:
        module = import_tflite(data, [model.input_name.split("__")[0]], list(model.output_names))
        export_torchscript(module, path)

    return install_model(repository, signature_of(model, data), source, export, force)


def build_all(repository: Path, cache_dir: Path, wheel: Path | None = None, force: bool = False) -> list[str]:
    """Build every model; returns the names that were (re)built."""
    wheel = verify_wheel(wheel) if wheel else fetch_wheel(cache_dir)
    return [m.name for m in MODELS if build_model(m, wheel, repository, force)]
