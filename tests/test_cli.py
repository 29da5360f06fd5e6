"""`fitroom pose` and `fitroom parse` as a user runs them: a real process, JSON lines, exit codes, no tracebacks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli import build_parser
from services.common.contracts import LIP, LIP_LABELS, LIP_PALETTE
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


# --------------------------------------------------------------------------- fitroom parse

PARSE_CORPUS = ("zero_bytes", "truncated_jpeg", "svg", "huge_declared_png")  # one per error code, and a broken decode


def check_label_png(path: Path) -> np.ndarray:
    """A palette PNG of LIP ids drawn in LIP_PALETTE (as VITON's parse maps are); returns the ids."""
    with Image.open(path) as img:
        assert img.mode == "P"
        palette = img.getpalette()
        labels = np.asarray(img)
    assert palette is not None and len(palette) == 3 * 256
    assert palette[: 3 * len(LIP_PALETTE)] == [v for colour in LIP_PALETTE for v in colour]
    assert labels.dtype == np.uint8 and int(labels.max()) < len(LIP_LABELS)
    return labels


def test_parse_batch_writes_label_maps_and_reports_each_bad_input(
    photos: dict[str, Path], tmp_path: Path, repository: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = []
    for name in PARSE_CORPUS:
        bad.append(inputs / f"{name}.png")
        bad[-1].write_bytes(corpus()[name][0])
    out = tmp_path / "out"  # created by the command
    paths = [photos["person"], *bad, photos["cat"]]
    result = fitroom("parse", *map(str, paths), "-o", str(out), "--agnostic", "upper")

    assert result.returncode == 2, result.stderr  # unreadable inputs outrank the photo without a person
    assert "Traceback" not in result.stderr
    records = lines(result)
    assert [r["image"] for r in records] == list(map(str, paths))  # one line per image, in order
    assert [r["error"]["code"] for r in records[1:-1]] == [corpus()[name][1] for name in PARSE_CORPUS]
    assert records[-1]["error"]["code"] == "no_person_detected"
    assert all(r["error"]["message"] for r in records[1:])
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "astronaut_agnostic.png"]  # nothing for failures

    record = records[0]
    assert record["labels"] == str(out / "astronaut.png") and record["agnostic"] == str(out / "astronaut_agnostic.png")
    assert record["size"] == [512, 512]
    labels = check_label_png(out / "astronaut.png")
    assert labels.shape == (512, 512)
    assert record["labels_present"] == [LIP_LABELS[i] for i in np.unique(labels)]
    assert {"background", "face", "hair", "upper_clothes"} <= set(record["labels_present"])
    with Image.open(out / "astronaut_agnostic.png") as img:
        assert img.mode == "L"
        agnostic = np.asarray(img)
    assert agnostic.shape == labels.shape
    assert set(np.unique(agnostic)) == {0, 255}
    assert not agnostic[labels == LIP["face"]].any()  # the mask and the labels belong together


def test_parse_without_agnostic_and_no_person_exit_code(
    photos: dict[str, Path], tmp_path: Path, repository: Path
) -> None:
    result = fitroom("parse", str(photos["person"]), str(photos["cat"]), "-o", str(tmp_path))
    assert result.returncode == 3 and "Traceback" not in result.stderr
    person, cat = lines(result)
    assert person["agnostic"] is None and person["size"] == [512, 512]
    check_label_png(Path(person["labels"]))
    assert set(cat) == {"image", "error"} and cat["error"]["code"] == "no_person_detected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png"]


def test_parse_without_the_face_model_is_a_clear_error(
    photos: dict[str, Path], tmp_path: Path, repository: Path
) -> None:
    """The pose models are there, the parser's face mesh is not: exit 4, whatever was printed before."""
    for model in repository.iterdir():
        if model.is_dir() and model.name != "face_landmark":
            (tmp_path / model.name).symlink_to(model.resolve(), target_is_directory=True)
    out = tmp_path / "out"
    result = fitroom("parse", str(photos["person"]), "-o", str(out), env={"FITROOM_MODEL_REPOSITORY": str(tmp_path)})
    assert result.returncode == 4
    assert "model_unavailable" in result.stderr and "face_landmark" in result.stderr
    assert "fitroom models build" in result.stderr and "Traceback" not in result.stderr


def test_parse_usage_errors() -> None:
    parser = build_parser()
    for argv in (["parse", "a.jpg"], ["parse", "a.jpg", "-o", "out", "--agnostic", "shoes"], ["parse", "-o", "out"]):
        with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(argv)
        assert info.value.code == 2, argv


def test_parse_never_overwrites_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any model loads: label maps written next to their PNG inputs would replace them,
    and two inputs with one stem would overwrite each other's label maps."""
    (tmp_path / "a").mkdir()
    photo, twin, x = tmp_path / "photo.png", tmp_path / "a" / "photo.jpg", tmp_path / "x.jpg"
    photo.write_bytes(b"original")
    for argv in (
        [str(photo), "-o", str(tmp_path)],
        [str(x), str(tmp_path / "x_agnostic.png"), "-o", str(tmp_path), "--agnostic", "dress"],
        [str(photo), str(twin), "-o", str(tmp_path / "out")],
    ):
        args = build_parser().parse_args(["parse", *argv])
        assert args.func(args) == 2, argv
        assert "fitroom: error:" in capsys.readouterr().err
    assert photo.read_bytes() == b"original" and not (tmp_path / "out").exists()
