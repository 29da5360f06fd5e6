"""Tiny paired data in VITON's layout for the learned paths' tests: the astronaut (shifted,
mirrored) wearing drawn tees of different colours, put on her by the geometric try-on, and each
tee's flat-lay. No ../shared data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from services import train
from services.common.artifacts import LocalArtifactStore
from services.common.imageio import encode_png
from services.common.inference import LocalBackend
from services.pipeline import Pipeline
from tests.warp.drawn import TEE, product_image


def write_paired_data(
    root: Path,
    astronaut: np.ndarray,
    repository: Path,
    pairs: int,
    colour_step: int,
    flat_lay_size: tuple[int, int] | None = None,
) -> Path:
    """`pairs` pairs under `root`: photo n wears the drawn tee with its channels rolled by
    colour_step * n (another colour, on two of every three); the flat-lay is the tee, resized to
    `flat_lay_size` (width, height) when given."""
    (root / "train" / "image").mkdir(parents=True)
    (root / "train" / "cloth").mkdir(parents=True)
    pipeline = Pipeline(LocalArtifactStore(root / "artifacts"), LocalBackend(repository))
    lines = []
    for n in range(pairs):
        person = train.fit_to(astronaut[:, 20 * n : 512 - 20 * (pairs - n)], train.TRAIN_SIZE)
        person = person[:, ::-1].copy() if n % 2 else person
        tee = product_image(TEE, seed=n)
        tee = np.roll(tee, colour_step * n, axis=2) if n % 3 else tee
        worn = pipeline.tryon(person, tee, "upper").image
        flat_lay = cv2.resize(tee, flat_lay_size, interpolation=cv2.INTER_AREA) if flat_lay_size else tee
        (root / "train" / "image" / f"{n:06d}_0.png").write_bytes(encode_png(worn))
        (root / "train" / "cloth" / f"{n:06d}_1.png").write_bytes(encode_png(flat_lay))
        lines.append(f"{n:06d}_0.png {n:06d}_1.png\n")
    (root / "train_pairs.txt").write_text("".join(lines))
    return root
