"""Latency of our pose stage against MediaPipe's BlazePose, on the same images in one run.

Images: the person photos in shared/data/photos/person, or scikit-image's astronaut resized
to 768x1024 when that folder is missing. Decoding is excluded: each call gets an RGB array.
Ours is stage.run(image, LocalBackend), its model calls timed by a wrapper with the backend's
signature; MediaPipe is Pose(static_image_mode=True, model_complexity=1).process(image).
The two alternate image by image, so that machine noise hits both alike.

--threads sets torch's intra-op threads for ours; MediaPipe's TFLite/XNNPACK runtime picks its
own thread count (mp.solutions exposes no knob for it), so the comparison is not thread-matched.

    .venv/bin/python bench/pose_speed.py --repeats 30 --warmup 5 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping

import cv2
import mediapipe as mp
import numpy as np
from shared_data import PERSON_PHOTOS

from services.common.config import get_settings
from services.common.errors import NoPersonDetected
from services.common.imageio import read_image_file
from services.common.inference import LocalBackend, embedded_backend
from services.common.mediapipe_models import POSE_DETECTION, POSE_LANDMARK
from services.pose import stage

PHOTOS = PERSON_PHOTOS
MODELS = (POSE_DETECTION.name, POSE_LANDMARK.name)


class TimedInfer:
    """Wraps an Infer: the same call, plus the seconds spent per model in the current image
    (`spent`, cleared by `reset`) and the first inputs each model received (`inputs`)."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.spent: dict[str, float] = defaultdict(float)
        self.inputs: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)

    def reset(self) -> None:
        self.spent.clear()

    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.backend(model, inputs)
        self.spent[model] += time.perf_counter() - start
        if len(self.inputs[model]) < 8:
            self.inputs[model].append({k: v.copy() for k, v in inputs.items()})
        return out


def load_images() -> tuple[list[np.ndarray], str]:
    files = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if files:
        return [read_image_file(p) for p in files], f"{len(files)} photos from {PHOTOS}"
    from skimage import data  # only needed without the shared photos

    return [cv2.resize(data.astronaut(), (768, 1024), interpolation=cv2.INTER_LINEAR)], "astronaut 768x1024"


def ms(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile, in milliseconds."""
    return float(np.median(samples)) * 1e3, float(np.percentile(samples, 90)) * 1e3


def run_ours(image: np.ndarray, infer: TimedInfer) -> None:
    with contextlib.suppress(NoPersonDetected):  # still a full pipeline run; the photos all have a person
        stage.run(image, infer)


def pipelines(images: list[np.ndarray], args: argparse.Namespace, timed: TimedInfer) -> dict[str, list[float]]:
    """Per-image seconds: ours (total, per model, other) and MediaPipe, alternating image by image."""
    samples: dict[str, list[float]] = defaultdict(list)
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        for rep in range(args.warmup + args.repeats):
            for image in images:
                timed.reset()
                start = time.perf_counter()
                run_ours(image, timed)
                ours = time.perf_counter() - start
                start = time.perf_counter()
                pose.process(image)
                theirs = time.perf_counter() - start
                if rep < args.warmup:
                    continue
                samples["ours total"].append(ours)
                samples["ours detector"].append(timed.spent[POSE_DETECTION.name])
                samples["ours landmark"].append(timed.spent[POSE_LANDMARK.name])
                samples["ours other (crop, post-processing)"].append(ours - sum(timed.spent.values()))
                samples["mediapipe total"].append(theirs)
    return samples


def backend_variants(
    inputs: dict[str, list[dict[str, np.ndarray]]], args: argparse.Namespace
) -> dict[tuple[str, bool], tuple[list[float], float]]:
    """Per (model, optimize): the seconds of each call on the recorded inputs, and the load time
    (torch.jit.load, plus optimize_for_inference when on). Off and on alternate call by call."""
    backends = {
        opt: LocalBackend(get_settings().model_repository, threads=args.threads, optimize=opt) for opt in (False, True)
    }
    loads: dict[tuple[str, bool], float] = {}
    calls: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for model in MODELS:
        for optimize, backend in backends.items():
            start = time.perf_counter()
            backend.load(model)
            loads[model, optimize] = time.perf_counter() - start
        for rep in range(args.warmup + args.repeats):
            for tensors in inputs[model]:
                for optimize, backend in backends.items():
                    start = time.perf_counter()
                    backend(model, tensors)
                    if rep >= args.warmup:
                        calls[model, optimize].append(time.perf_counter() - start)
    return {key: (calls[key], loads[key]) for key in loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed passes over the images")
    parser.add_argument("--warmup", type=int, default=5, help="untimed passes first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for ours")
    args = parser.parse_args()

    images, source = load_images()
    timed = TimedInfer(embedded_backend(get_settings().model_copy(update={"torch_threads": args.threads})))
    samples = pipelines(images, args, timed)
    reference = ms(samples["mediapipe total"])[0]

    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    print(
        f"{source} ({', '.join(sizes)}); {args.warmup} warm-up + {args.repeats} timed passes, "
        f"{len(samples['ours total'])} samples per row; torch threads {args.threads}, "
        "MediaPipe threads its own.\n"
    )
    print("| pose stage, per image | median ms | p90 ms | × MediaPipe median |")
    print("| --- | ---: | ---: | ---: |")
    for row, values in samples.items():
        median, p90 = ms(values)
        print(f"| {row} | {median:.1f} | {p90:.1f} | {median / reference:.2f} |")

    print("\nLocalBackend alone, the same model inputs: torch.jit.optimize_for_inference off vs on.\n")
    print(
        "| model | load s, off | load s, on | median ms, off | median ms, on | p90 ms, off | p90 ms, on "
        "| speed-up (median) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    variants = backend_variants(timed.inputs, args)
    for model in MODELS:
        (off, load_off), (on, load_on) = variants[model, False], variants[model, True]
        (med_off, p90_off), (med_on, p90_on) = ms(off), ms(on)
        print(
            f"| {model} | {load_off:.2f} | {load_on:.2f} | {med_off:.1f} | {med_on:.1f} | {p90_off:.1f} "
            f"| {p90_on:.1f} | {med_off / med_on:.2f}× |"
        )


if __name__ == "__main__":
    main()
