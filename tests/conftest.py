"""Shared fixtures: the built model repository, real photos from packages, and ../shared data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from services.common.config import PROJECT_ROOT, get_settings
from services.common.inference import LocalBackend
from services.common.mediapipe_models import MODELS
from services.common.model_repository import model_file
from services.fusion import model as fusion_model
from services.warp import model as warp_model

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repository() -> Path:
    repo = get_settings().model_repository
    names = [m.name for m in MODELS] + [warp_model.NAME, fusion_model.NAME]
    missing = [name for name in names if not model_file(repo, name).exists()]
    if missing:
        pytest.fail(f"models {missing} are not built: run `make models` (fitroom models build)")
    # The models built from this checkout's code are rebuilt when their source changed, so that
    # the tests never run an installed copy older than the code they test.
    warp_model.build(repo)
    fusion_model.build(repo)
    return repo


@pytest.fixture(scope="session")
def infer(repository: Path) -> LocalBackend:
    return LocalBackend(repository)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photo of a person (512x512, half body), shipped with scikit-image."""
    return data.astronaut()


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    """A real photo with no person in it (a cat)."""
    return data.chelsea()


@pytest.fixture(scope="session")
def shared_person_photos() -> list[Path]:
    folder = SHARED_DATA / "photos" / "person"
    if not folder.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return sorted(folder.iterdir())
