"""The storefront's case, end to end through a real `fitroom serve` (embedded mode, 2 pipeline
workers, one torch thread each, by default: the 2 cores of this machine): a catalogue of 20 garments on one
shopper, as one batch on a registered person (POST /v1/persons, then POST /v1/tryon/batch), against
20 single try-ons sent one by one with the photo each time (POST /v1/tryon, wait, next), measured in
the same run on the same server. Each run has a photo of its own, so each starts with a cold person
cache; the garments are registered (analysed) before either run.

Photos: 768x1024 photos of ../shared/data/photos/person (vitonhd_*) and the tops of
../shared/data/photos/garment completed with drawn tops; else the astronaut scaled to 768x1024 (and
mirrored) and drawn tops only.

    .venv/bin/python bench/storefront.py [--garments 20]

Prints one table: total seconds, time to the first result, the latency of a try-on (from the
request that made it to its result being ready: median and p90), the stage work per try-on, how
many times pose and parser ran, and the ratio of the totals.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from shared_data import SHARED_DATA
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.common.imageio import encode_jpeg, encode_png, read_image_file
from tests.gateway.helpers import Server
from tests.warp.drawn import CARDIGAN, LONG_SLEEVE, TANK_TOP, TEE, product_image

SIZE = (768, 1024)


def photos() -> list[bytes]:
    folder = SHARED_DATA / "photos" / "person"
    found = [read_image_file(p) for p in sorted(folder.glob("vitonhd_*.jpg"))] if folder.exists() else []
    found = [p for p in found if p.shape[:2] == SIZE[::-1]]
    if len(found) < 3:
        base = cv2.resize(data.astronaut(), SIZE)
        found = [base, np.ascontiguousarray(base[:, ::-1]), np.ascontiguousarray(base[8:-8, 8:-8])]
    return [encode_jpeg(p) for p in found[:3]]


def garments(count: int) -> list[bytes]:
    """The tops of ../shared/data/photos/garment, then drawn tops up to `count`."""
    folder = SHARED_DATA / "photos" / "garment"
    tops = [p for p in sorted(folder.glob("*")) if any(k in p.name for k in ("vitonhd", "upper", "top"))]
    found = [path.read_bytes() for path in tops[:count]] if folder.exists() else []
    outlines = (TEE, TANK_TOP, LONG_SLEEVE, CARDIGAN)
    return found + [encode_png(product_image(outlines[n % 4], seed=n)) for n in range(count - len(found))]


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job = client.get(f"/v1/tryon/{job_id}", params={"wait": 30}).json()
        if job["status"] in ("succeeded", "failed"):
            return job


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def work(job: dict[str, Any]) -> float:
    return sum(stage["seconds"] or 0.0 for stage in job["stages"].values())


def computed(jobs: list[dict[str, Any]]) -> str:
    runs = [sum(job["stages"][stage]["status"] == "done" for job in jobs) for stage in ("pose", "parser")]
    return f"{runs[0]} / {runs[1]}"


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--garments", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="pipeline worker threads (default 2)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker (default 1)")
    args = parser.parse_args()
    batch_photo, single_photo, warm_photo = photos()
    catalogue = garments(args.garments)
    env = {"FITROOM_TORCH_THREADS": str(args.torch_threads), "FITROOM_QUEUE_SIZE": "64", "FITROOM_MAX_WAIT_S": "30"}
    server = Server(Path(tempfile.mkdtemp(prefix="fitroom-storefront-")), env, workers=args.workers)
    server.start()
    try:
        key = server.create_key("bench")
        with server.client(key) as client:
            ids = []
            for n, image in enumerate(catalogue):
                files = {"image": (f"g{n}", image, "application/octet-stream")}
                response = client.post("/v1/garments", files=files, data={"category": "upper"})
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            # Warm-up (first inference of each model in each worker thread), on a photo of its own.
            warm = [
                client.post("/v1/tryon", files={"person": ("w.jpg", warm_photo)}, data={"garment_id": g})
                for g in ids[:2]
            ]
            for response in warm:
                finished(client, response.json()["id"])

            start = time.perf_counter()
            created = time.time()
            person = client.post("/v1/persons", files={"person": ("me.jpg", batch_photo, "image/jpeg")}).json()
            batch = client.post("/v1/tryon/batch", json={"person_id": person["id"], "garment_ids": ids}).json()
            while batch["status"] != "finished":
                batch = client.get(f"/v1/tryon/batch/{batch['id']}", params={"wait": 30}).json()
            batch_total = time.perf_counter() - start
            batch_jobs = [client.get(job["status_url"]).json() for job in batch["jobs"]]
            batch_latency = [seconds(job["finished_at"]) - created for job in batch_jobs]

            start = time.perf_counter()
            single_jobs, single_latency = [], []
            for garment_id in ids:
                sent = time.perf_counter()
                files = {"person": ("me.jpg", single_photo, "image/jpeg")}
                job_id = client.post("/v1/tryon", files=files, data={"garment_id": garment_id}).json()["id"]
                single_jobs.append(finished(client, job_id))
                single_latency.append(time.perf_counter() - sent)
            single_total = time.perf_counter() - start
    finally:
        server.stop()

    failed = [job["error"] for job in batch_jobs + single_jobs if job["status"] != "succeeded"]
    if failed:
        print(f"failed try-ons: {failed}", file=sys.stderr)
        return 1
    n = len(ids)
    rows = [
        ("batch on a registered person", batch_total, min(batch_latency), batch_latency, batch_jobs),
        ("singles, photo each time", single_total, single_latency[0], single_latency, single_jobs),
    ]
    setup = f"embedded, {args.workers} workers x {args.torch_threads} torch threads"
    print(f"storefront, {n} garments on one shopper, {datetime.now(UTC):%Y-%m-%d} ({setup})")
    print(
        "| run | try-ons | total s | first result s | latency median / p90 s | stage work median / p90 s "
        "| pose / parser computed |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, total, first, latency, jobs in rows:
        works = [work(job) for job in jobs]
        print(
            f"| {name} | {n} | {total:.1f} | {first:.2f} | {statistics.median(latency):.2f} / {p90(latency):.2f} "
            f"| {statistics.median(works):.3f} / {p90(works):.3f} | {computed(jobs)} |"
        )
    print(f"singles / batch, total time: {single_total / batch_total:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
