"""Parser stage speed at 768x1024 on 2 cores, pose excluded, with its parts broken down.

Photos: the person photos of ../shared/data/photos resized to 768x1024 when present, else
scikit-image's astronaut padded to 3:4 and resized. The reference column is the issue's
budget (60 ms median for the label map), since no other parser runs here to compare with.

    .venv/bin/python bench/parse_speed.py --repeats 20
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import cv2
import numpy as np
from shared_data import PERSON_PHOTOS
from skimage import data

from services.common.config import get_settings
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.parser import stage
from services.parser.agnostic import agnostic_mask
from services.parser.face import face_mesh
from services.pose import stage as pose_stage

PHOTOS = PERSON_PHOTOS
SIZE = (768, 1024)
BUDGET_MS = 60.0


def load_images() -> tuple[list[np.ndarray], str]:
    if PHOTOS.is_dir():
        images = [cv2.resize(read_image_file(p), SIZE, interpolation=cv2.INTER_AREA) for p in sorted(PHOTOS.iterdir())]
        return images, f"{len(images)} photos from {PHOTOS}"
    astronaut = data.astronaut()
    padded = cv2.copyMakeBorder(astronaut, 0, 171, 0, 0, cv2.BORDER_REPLICATE)
    return [cv2.resize(padded, SIZE, interpolation=cv2.INTER_AREA)], "scikit-image astronaut"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    infer = embedded_backend(get_settings().model_copy(update={"torch_threads": args.threads}))
    images, source = load_images()
    poses = [pose_stage.run(image, infer) for image in images]
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(args.warmup + args.repeats):
        for image, pose in zip(images, poses, strict=True):
            start = time.perf_counter()
            labels = stage.run(image, pose, infer).labels
            labelled = time.perf_counter()
            agnostic_mask(labels, pose, "upper")
            done = time.perf_counter()
            face_mesh(image, pose, infer)
            mesh = time.perf_counter() - done
            if rep >= args.warmup:
                samples["label map (stage.run)"].append(labelled - start)
                samples["  of which face mesh"].append(mesh)
                samples["agnostic mask, upper"].append(done - labelled)
                samples["label map + agnostic"].append(done - start)
    print(
        f"{source}, {SIZE[0]}x{SIZE[1]}; {args.repeats} passes after {args.warmup} warm-up; "
        f"torch threads {args.threads}; pose excluded.\n"
    )
    print(f"| parser, per image | median ms | p90 ms | × budget ({BUDGET_MS:.0f} ms) |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in samples.items():
        ms = 1000 * np.array(values)
        median = float(np.median(ms))
        print(f"| {name} | {median:.1f} | {np.percentile(ms, 90):.1f} | {median / BUDGET_MS:.2f} |")


if __name__ == "__main__":
    main()
