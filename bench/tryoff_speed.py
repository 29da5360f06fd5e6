"""Try-off speed at 768x1024 on this machine's CPU, pose and parse cached (as a registered photo's
are): the default try-off alone, and through Pipeline.tryoff (the store read included).

Reference, measured in the same run: the warp stage for the same photo (a garment laid on the
body, the splines' other direction). Person: ../shared/data/photos/person/vitonhd_00008_00.jpg
when present, else the astronaut scaled to 768x1024; the warp's garment:
../shared/data/photos/garment/vitonhd_02305_00.jpg, else the drawn tee.

With --learned NAME, the learned try-off installed as NAME too (the default at the training size,
the network, the answer scaled onto the canvas).

    .venv/bin/python bench/tryoff_speed.py --runs 20 [--learned NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from shared_data import SHARED_DATA
from skimage import data
from warp_speed import timings

from services.common.artifacts import LocalArtifactStore
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.pipeline import Pipeline
from services.warp import stage as warp_stage
from services.warp import tryoff
from services.warp.garment import analyse_garment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.warp.drawn import TEE, product_image

TARGET_MS = 150.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--learned", help="also the learned try-off installed under this name")
    args = parser.parse_args()
    person_file = SHARED_DATA / "photos" / "person" / "vitonhd_00008_00.jpg"
    garment_file = SHARED_DATA / "photos" / "garment" / "vitonhd_02305_00.jpg"
    person = read_image_file(person_file) if person_file.exists() else cv2.resize(data.astronaut(), (768, 1024))
    person = cv2.resize(person, (768, 1024), interpolation=cv2.INTER_AREA)
    garment_image = read_image_file(garment_file, rgba=True) if garment_file.exists() else product_image(TEE)
    infer = embedded_backend()
    pipeline = Pipeline(LocalArtifactStore(tempfile.mkdtemp()), infer)
    pose, parse = pipeline.person(person)  # computed once and stored: the runs below read them
    garment = analyse_garment(garment_image)

    default = timings(lambda: tryoff.extract(person, pose, parse, "upper"), args.runs)
    through_store = timings(lambda: pipeline.tryoff(person, "upper"), args.runs)
    learned = (
        timings(lambda: tryoff.extract(person, pose, parse, "upper", args.learned, infer), args.runs)
        if args.learned
        else None
    )
    warp = timings(lambda: warp_stage.run(garment_image, garment, pose, parse, infer), args.runs)

    print(f"person {person.shape[1]}x{person.shape[0]}, {args.runs} runs, pose and parse cached")
    print("| step | median ms | p90 ms | x reference | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    ref = float(np.median(warp))
    rows = [
        ("try-off, default (tryoff.extract)", default, f"<= {TARGET_MS:.0f} ms"),
        ("try-off through Pipeline.tryoff (pose, parse read from the store)", through_store, ""),
        *([(f"try-off, learned ({args.learned}, tryoff.extract)", learned, "reported")] if learned is not None else []),
        ("reference: warp stage, same photo", warp, ""),
    ]
    for name, t, target in rows:
        print(f"| {name} | {np.median(t):.1f} | {np.percentile(t, 90):.1f} | {np.median(t) / ref:.2f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
