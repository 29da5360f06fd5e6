"""Settings in one place. Every knob reads an environment variable `FITROOM_<NAME>`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FITROOM_{name}", default)


class Settings(BaseModel):
    # Triton model repository: triton_models/<name>/config.pbtxt and 1/model.pt.
    model_repository: Path = Field(
        default_factory=lambda: Path(_env("MODEL_REPOSITORY", str(PROJECT_ROOT / "triton_models")))
    )
    # Downloaded wheels and other build inputs.
    cache_dir: Path = Field(default_factory=lambda: Path(_env("CACHE_DIR", str(Path.home() / ".cache" / "fitroom"))))
    # Artifacts, job state and results in embedded mode.
    data_dir: Path = Field(default_factory=lambda: Path(_env("DATA_DIR", str(PROJECT_ROOT / "data"))))
    max_image_bytes: int = Field(default_factory=lambda: int(_env("MAX_IMAGE_BYTES", str(20 * 1024 * 1024))))
    max_image_pixels: int = Field(default_factory=lambda: int(_env("MAX_IMAGE_PIXELS", str(40_000_000))))
    # Intra-op threads for the local TorchScript backend; 0 leaves torch's default.
    torch_threads: int = Field(default_factory=lambda: int(_env("TORCH_THREADS", "0")))
    # OpenCV's own thread pool; 1 keeps it from contending with torch for the cores.
    opencv_threads: int = Field(default_factory=lambda: int(_env("OPENCV_THREADS", "1")))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
