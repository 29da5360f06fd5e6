"""Gateway throughput: requests/s, p50 and p99 of status reads and of submissions, at 1, 8 and 32
concurrent connections, against a live `fitroom serve` on this machine, in embedded and in
distributed mode (Redis, one `fitroom worker` per stage), and distributed with two gateway
processes (`fitroom serve --processes 2`, mode "distributed-2").

What is measured is the gateway alone: authentication, validation, the state store, the queue and
serialisation. THE PIPELINE IS REPLACED BY AN INSTANT ONE in this benchmark only (every stage does
nothing and the result is a 64x64 grey JPEG), so that a job costs the gateway what it costs in
production and nothing more; the server processes are started from this file with that patch.

Routes:
  status          GET /v1/tryon/{id} of a finished job
  submit_by_id    POST /v1/tryon, JSON: a 256x256 person photo as a data URL and a garment_id
  submit_upload   POST /v1/tryon, multipart: a 768x1024 person JPEG upload and a garment_id
  healthz         GET /healthz (no key, no state): the reference, measured in the same run

The load generator is wrk (Debian: `apt-get install wrk`), one thread, keep-alive connections; it
shares the machine's 2 cores with the server, as a storefront's traffic would not.

    .venv/bin/python bench/gateway.py [--duration 8] [--modes embedded,distributed,distributed-2]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONNECTIONS = (1, 8, 32)
ROUTES = ("healthz", "status", "submit_by_id", "submit_upload")


# ---------------------------------------------------------------- the servers, with the instant pipeline


def _instant_image() -> np.ndarray:
    return np.full((64, 64, 3), 128, np.uint8)


def patch_instant_pipeline() -> None:
    """Replace the stages in this process (and the pool processes it forks) by instant ones."""
    from types import SimpleNamespace

    from services.distributed import tasks
    from services.gateway import worker

    class InstantPipeline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def tryon(self, person: np.ndarray, garment: np.ndarray, category: str | None = None, **_: object) -> object:
            return SimpleNamespace(image=_instant_image(), category=category or "upper")

    worker.Pipeline = InstantPipeline  # type: ignore[misc, assignment]

    def nothing(context: object, job: object, store: object, recorder: object) -> None:
        pass

    def fusion(context: tasks.Worker, job: tasks.Job, store: tasks.TenantArtifactStore, recorder: object) -> None:
        tasks.succeed(context, job, store, _instant_image(), "upper")

    tasks.STEPS.update({stage: nothing for stage in tasks.STEPS} | {"fusion": fusion})


def child(argv: list[str]) -> int:
    """`bench/gateway.py --child serve|worker ...`: the fitroom command, with the instant pipeline."""
    patch_instant_pipeline()
    from services.cli import main

    return main(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    url: str
    api_key: str
    job_id: str  # a finished job, for the status route
    garment_id: str
    unfinished: Callable[[], int]  # jobs queued or running: submissions leave a backlog behind them


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, __file__, "--child", *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


@contextlib.contextmanager
def deployment(mode: str, workdir: Path) -> Iterator[Deployment]:
    """`mode`: embedded, distributed, or distributed-N (N gateway processes)."""
    from services.gateway.redis_state import connect
    from tests.redis_server import redis_server

    mode, _, processes = mode.partition("-")
    with contextlib.ExitStack() as stack:
        port = free_port()
        env = {
            **os.environ,
            "FITROOM_DATA_DIR": str(workdir / "data"),
            "FITROOM_QUEUE_SIZE": "1000000",
            "FITROOM_LOG_LEVEL": "warning",
        }
        children: list[subprocess.Popen[bytes]] = []
        unfinished = functools.partial(sqlite_unfinished, workdir / "data" / "gateway.sqlite3")
        if mode == "distributed":
            redis = stack.enter_context(redis_server(workdir / "redis"))
            unfinished = functools.partial(connect(redis.url).zcard, "fitroom:jobs:unfinished")
            env |= {"FITROOM_MODE": "distributed", "FITROOM_REDIS_URL": redis.url, "FITROOM_STORAGE": "local"}
            for stage in ("garment", "pose", "parser", "warp", "fusion"):
                children.append(spawn(["worker", "--stage", stage, "--name", stage], env, workdir / f"{stage}.log"))
        serve = ["serve", "--port", str(port), "--log-level", "warning", "--processes", processes or "1"]
        children.append(spawn(serve, env, workdir / "serve.log"))
        stack.callback(stop, children)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, children[-1], workdir / "serve.log")
        keys = subprocess.run(
            [sys.executable, "-m", "services.cli", "keys", "create", "--tenant", "bench", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        api_key = json.loads(keys.stdout)["api_key"]
        yield setup(url, api_key, unfinished)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fitroom serve exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"fitroom serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def person_jpeg(height: int, width: int) -> bytes:
    from skimage import data
    from skimage.transform import resize

    from services.common.imageio import encode_jpeg

    astronaut = (resize(data.astronaut(), (height, width)) * 255).astype(np.uint8)
    return encode_jpeg(astronaut)


def sqlite_unfinished(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]


def wait_drained(target: Deployment, timeout: float = 600) -> None:
    """Until the jobs of the last submissions have run: their workers would slow the next measurement."""
    deadline = time.monotonic() + timeout
    while target.unfinished() and time.monotonic() < deadline:
        time.sleep(0.5)


def setup(url: str, api_key: str, unfinished: Callable[[], int]) -> Deployment:
    """Register a garment and finish one job through the instant pipeline."""
    from services.common.imageio import encode_png
    from tests.warp.drawn import TEE, product_image

    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        garment = client.post("/v1/garments", files={"image": ("tee.png", encode_png(product_image(TEE)), "image/png")})
        garment.raise_for_status()
        garment_id = garment.json()["id"]
        person = f"data:image/jpeg;base64,{base64.b64encode(person_jpeg(256, 256)).decode()}"
        job = client.post("/v1/tryon", json={"person": person, "garment_id": garment_id})
        job.raise_for_status()
        job_id = job.json()["id"]
        status = client.get(f"/v1/tryon/{job_id}", params={"wait": 30}).json()
        if status["status"] != "succeeded":
            raise SystemExit(f"the instant job did not succeed: {status}")
    return Deployment(url, api_key, job_id, garment_id, unfinished)


# ------------------------------------------------------------------------------------------ the load


@dataclass
class Result:
    requests_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk_script(route: str, target: Deployment, workdir: Path) -> Path:
    """The wrk Lua script for a route: its method, headers and body."""
    body, content_type, method = b"", "", "GET"
    if route == "submit_by_id":
        person = f"data:image/jpeg;base64,{base64.b64encode(person_jpeg(256, 256)).decode()}"
        body = json.dumps({"person": person, "garment_id": target.garment_id}).encode()
        content_type, method = "application/json", "POST"
    elif route == "submit_upload":
        boundary = "fitroombench"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="garment_id"\r\n\r\n{target.garment_id}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="person"; filename="p.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + person_jpeg(1024, 768)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type, method = f"multipart/form-data; boundary={boundary}", "POST"
    body_path = workdir / f"{route}.body"
    body_path.write_bytes(body)
    lines = [f'wrk.method = "{method}"']
    if route != "healthz":
        lines.append(f'wrk.headers["Authorization"] = "Bearer {target.api_key}"')
    if body:
        lines += [
            f'wrk.headers["Content-Type"] = "{content_type}"',
            f'local f = io.open("{body_path}", "rb"); wrk.body = f:read("*a"); f:close()',
        ]
    script = workdir / f"{route}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def path_of(route: str, target: Deployment) -> str:
    return {"healthz": "/healthz", "status": f"/v1/tryon/{target.job_id}"}.get(route, "/v1/tryon")


def run_wrk(route: str, connections: int, duration: float, target: Deployment, workdir: Path) -> Result:
    script = wrk_script(route, target, workdir)
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
        "-s", str(script), target.url + path_of(route, target),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return Result(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        latency_ms(out, "50%"),
        latency_ms(out, "99%"),
        errors,
    )


def latency_ms(out: str, quantile: str) -> float:
    value, unit = re.search(rf"^\s+{quantile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--modes", default="embedded,distributed,distributed-2")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)
    if shutil.which("wrk") is None:
        raise SystemExit("bench/gateway.py needs wrk: apt-get install wrk")
    print("gateway throughput with an INSTANT pipeline (bench/gateway.py patches the stages out), wrk, 1 thread")
    columns = ("mode", "route", "conns", "req/s", "p50 ms", "p99 ms", "vs healthz", "errors")
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, (13, 13, 5, 7, 7, 7, 10, 6), strict=True)))
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp, deployment(mode, Path(tmp)) as target:
            run_wrk("status", 8, 2, target, Path(tmp))  # warm up
            for connections in CONNECTIONS:
                reference = None
                for route in ROUTES:
                    wait_drained(target)
                    result = run_wrk(route, connections, args.duration, target, Path(tmp))
                    reference = reference or result.requests_s
                    print(
                        f"{mode:>13} {route:>13} {connections:>5} {result.requests_s:7.0f} {result.p50_ms:7.1f}"
                        f" {result.p99_ms:7.1f} {result.requests_s / reference:10.2f} {result.errors:>6}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
