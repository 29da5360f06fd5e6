"""`fitroom pose` as a user runs it: a real process, JSON lines, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bad_images import ASTRONAUT, corpus


def fitroom(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {"person": folder / "astronaut.png", "cat": folder / "cat.jpg"}
    Image.fromarray(ASTRONAUT).save(paths["person"])
    from skimage import data

    Image.fromarray(data.chelsea()).save(paths["cat"])
    return paths


@pytest.mark.parametrize(("fmt", "joints"), [("coco18", 18), ("body25", 25), ("blazepose", 33)])
def test_pose_formats(photos: dict[str, Path], tmp_path: Path, fmt: str, joints: int, repository: Path) -> None:
    result = fitroom("pose", str(photos["person"]), "--format", fmt, "--mask-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (record,) = lines(result)
    assert record["image"] == str(photos["person"])
    (person,) = record["people"]
    assert len(person["pose_keypoints_2d"]) == 3 * joints
    if fmt == "blazepose":
        assert len(person["landmarks"]) == 33
    mask = np.asarray(Image.open(tmp_path / "astronaut_mask.png"))
    assert mask.shape == (512, 512) and mask.max() == 255 and mask.min() == 0


def test_batch_with_bad_inputs_reports_each_and_goes_on(
    photos: dict[str, Path], tmp_path: Path, repository: Path
) -> None:
    bad_files = []
    for name, (data, _code) in corpus().items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        bad_files.append(path)
    missing = tmp_path / "does_not_exist.jpg"
    paths = [photos["person"], *bad_files, missing, photos["cat"], photos["person"]]
    result = fitroom("pose", *map(str, paths))
    assert result.returncode == 2  # an unreadable input outranks the photo without a person
    assert "Traceback" not in result.stderr
    records = lines(result)
    assert [r["image"] for r in records] == list(map(str, paths))  # one line per image, in order
    expected = [code for _data, code in corpus().values()]
    assert [r["error"]["code"] for r in records[1 : 1 + len(expected)]] == expected
    assert records[-3]["error"]["code"] == "image_invalid"  # the missing file
    assert records[-2]["error"]["code"] == "no_person_detected"
    assert "people" in records[0] and "people" in records[-1]


def test_no_person_exit_code(photos: dict[str, Path], repository: Path) -> None:
    result = fitroom("pose", str(photos["cat"]))
    assert result.returncode == 3
    assert lines(result)[0]["error"]["code"] == "no_person_detected"


def test_missing_models_are_a_clear_error(photos: dict[str, Path], tmp_path: Path) -> None:
    result = fitroom("pose", str(photos["person"]), env={"FITROOM_MODEL_REPOSITORY": str(tmp_path)})
    assert result.returncode == 4
    assert "model_unavailable" in result.stderr and "fitroom models build" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2_without_traceback() -> None:
    result = fitroom("pose")
    assert result.returncode == 2 and "Traceback" not in result.stderr
