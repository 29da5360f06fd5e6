"""Distributed-mode throughput: jobs/s through the REST gateway, five stage queues, Triton and S3,
with 1 and then 2 worker processes per stage; and, per stage, the time a task waited in its queue
against the time it worked.

Every part runs as a real process on this machine (tests/distributed/cluster.py). A burst of jobs
is submitted at once and timed until the last has finished. Each job has a person photo of its own
(pose and parser run) and one of four garments (analysed on first use). The reference, measured in
the same run: the same jobs through the embedded Pipeline in this one process, one after another.

Waited: a stage's start minus the previous stage's finish (the job's creation for the first).
Worked: its finish minus its start, as the worker saw it (including artifact reads and writes).

    .venv/bin/python bench/distributed.py --jobs 24 [--no-triton]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.common.artifacts import LocalArtifactStore
from services.common.imageio import decode_image, decode_image_rgba
from services.common.inference import embedded_backend
from services.distributed.queues import QUEUES
from services.distributed.state import StageTiming
from services.gateway.redis_state import connect
from services.pipeline import Pipeline
from tests.distributed.cluster import Cluster, cluster
from tests.gateway.helpers import encode, wait_finished
from tests.warp.drawn import TEE, product_image


def job_inputs(count: int) -> list[tuple[bytes, bytes]]:
    """A distinct person photo per job (shifted crops of the astronaut), garments in turn."""
    astronaut = data.astronaut()
    garments = [encode(product_image(TEE, seed=seed), "PNG") for seed in range(4)]
    persons = [encode(np.ascontiguousarray(astronaut[i % 8 * 4 :, i // 8 * 4 :]), "JPEG") for i in range(count)]
    return [(person, garments[i % len(garments)]) for i, person in enumerate(persons)]


def run_burst(running: Cluster, inputs: list[tuple[bytes, bytes]]) -> tuple[float, dict[str, list[float]]]:
    """Seconds from the first submission to the last result, and per-stage waited/worked samples."""
    key = running.gateway.create_key(f"bench{time.time_ns()}")
    with running.gateway.client(key) as client:
        start = time.perf_counter()
        job_ids = []
        for person, garment in inputs:
            response = client.post(
                "/v1/tryon",
                files={"person": ("p.jpg", person, "image/jpeg"), "garment": ("g.png", garment, "image/png")},
            )
            response.raise_for_status()
            job_ids.append(response.json()["id"])
        jobs = [wait_finished(client, job_id, timeout=600) for job_id in job_ids]
        elapsed = time.perf_counter() - start
    failed = [job for job in jobs if job["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed: {failed[0]}")
    timing = StageTiming(connect(running.redis.url))
    samples: dict[str, list[float]] = {f"{stage}.{kind}": [] for stage in QUEUES for kind in ("waited", "worked")}
    for job in jobs:
        times = timing.of(job["id"])
        previous = datetime.fromisoformat(job["created_at"]).timestamp()
        for stage in QUEUES:
            started, finished = times[f"{stage}.started"], times[f"{stage}.finished"]
            samples[f"{stage}.waited"].append(started - previous)
            samples[f"{stage}.worked"].append(finished - started)
            previous = finished
    return elapsed, samples


def embedded_seconds(inputs: list[tuple[bytes, bytes]]) -> float:
    infer = embedded_backend()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(LocalArtifactStore(tmp), infer)
        pipeline.tryon(decode_image(inputs[0][0]), decode_image_rgba(inputs[0][1]))  # load the models
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(LocalArtifactStore(tmp), infer)
        start = time.perf_counter()
        for person, garment in inputs:
            pipeline.tryon(decode_image(person), decode_image_rgba(garment))
        return time.perf_counter() - start


def ms(values: list[float], q: float) -> float:
    return 1000 * float(np.quantile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=24, help="jobs per burst")
    parser.add_argument("--no-triton", action="store_true", help="workers run the models in-process")
    args = parser.parse_args()
    inputs = job_inputs(args.jobs)
    reference = embedded_seconds(inputs)
    rows = []
    stage_rows: dict[int, dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        cluster(Path(tmp), use_triton=not args.no_triton, workers_per_stage=1) as running,
    ):
        run_burst(running, job_inputs(4))  # warm up: models loaded, connections made
        for per_stage in (1, 2):
            if per_stage == 2:
                running.workers.start_all(1)
            # A fresh set of photos each burst: nothing cached from the previous one.
            burst = [(encode(decode_image(p)[per_stage:], "JPEG"), g) for p, g in inputs]
            elapsed, samples = run_burst(running, burst)
            rows.append((per_stage, elapsed))
            stage_rows[per_stage] = samples

    models = "local models" if args.no_triton else "Triton"
    print(f"distributed try-on throughput, {args.jobs} jobs per burst, {models}")
    print(f"{'workers/stage':>13} {'seconds':>8} {'jobs/s':>7} {'vs embedded':>12}")
    print(f"{'embedded':>13} {reference:8.1f} {args.jobs / reference:7.2f} {1.0:12.2f}")
    for per_stage, elapsed in rows:
        print(f"{per_stage:>13} {elapsed:8.1f} {args.jobs / elapsed:7.2f} {reference / elapsed:12.2f}")
    for per_stage, samples in stage_rows.items():
        print(f"\nper stage, {per_stage} worker(s) each: ms waited in the queue vs worked (median, p90)")
        print(f"{'stage':>8} {'waited':>8} {'p90':>8} {'worked':>8} {'p90':>8}")
        for stage in QUEUES:
            waited, worked = samples[f"{stage}.waited"], samples[f"{stage}.worked"]
            quantiles = [ms(values, q) for values in (waited, worked) for q in (0.5, 0.9)]
            print(f"{stage:>8} " + " ".join(f"{value:8.0f}" for value in quantiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
