"""Warp-stage speed at 768x1024 on this machine's CPU: the warp (splines fitted + garment_warp
model) and garment analysis, cold and from the artifact cache.

Reference, measured in the same run: cv2.remap of the same garment onto a 768x1024 canvas
through a precomputed map, i.e. the bare per-pixel sampling with no spline or compositing.
Person: ../shared/data/photos/person/vitonhd_00008_00.jpg when present, else the astronaut
scaled to 768x1024; garment: ../shared/data/photos/garment/vitonhd_02305_00.jpg, else a drawn tee.

    .venv/bin/python bench/warp_speed.py --runs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from shared_data import SHARED_DATA
from skimage import data

from services.common.artifacts import LocalArtifactStore
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.parser import stage as parser_stage
from services.pose import stage as pose_stage
from services.warp import stage as warp_stage
from services.warp.cache import cached_analysis
from services.warp.garment import analyse_garment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.warp.drawn import TEE, product_image


def timings(fn: Callable[[], object], runs: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return np.array(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    person_file = SHARED_DATA / "photos" / "person" / "vitonhd_00008_00.jpg"
    garment_file = SHARED_DATA / "photos" / "garment" / "vitonhd_02305_00.jpg"
    person = read_image_file(person_file) if person_file.exists() else cv2.resize(data.astronaut(), (768, 1024))
    garment_image = read_image_file(garment_file, rgba=True) if garment_file.exists() else product_image(TEE)
    height, width = person.shape[:2]
    infer = embedded_backend()
    pose = pose_stage.run(person, infer)
    parse = parser_stage.run(person, pose, infer)
    garment = analyse_garment(garment_image)

    warp = timings(lambda: warp_stage.run(garment_image, garment, pose, parse, infer), args.runs)
    map_x = np.random.default_rng(0).uniform(0, garment_image.shape[1] - 1, (height, width)).astype(np.float32)
    map_y = np.random.default_rng(1).uniform(0, garment_image.shape[0] - 1, (height, width)).astype(np.float32)
    remap = timings(lambda: cv2.remap(garment_image, map_x, map_y, cv2.INTER_LINEAR), args.runs)
    cold = timings(lambda: analyse_garment(garment_image), args.runs)
    store = LocalArtifactStore(tempfile.mkdtemp())
    cached_analysis(store, garment_image)  # stores it
    cached = timings(lambda: cached_analysis(store, garment_image), args.runs)

    print(f"person {width}x{height}, garment {garment_image.shape[1]}x{garment_image.shape[0]}, {args.runs} runs")
    print("| step | median ms | p90 ms | x reference | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    ref = np.median(remap)
    rows = [
        ("warp (splines + garment_warp)", warp, "<= 50 ms median"),
        ("garment analysis, cold", cold, "<= 100 ms median"),
        ("garment analysis, cached", cached, "no analysis (0)"),
        ("reference: cv2.remap, same canvas", remap, ""),
    ]
    for name, t, target in rows:
        print(f"| {name} | {np.median(t):.1f} | {np.percentile(t, 90):.1f} | {np.median(t) / ref:.2f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
