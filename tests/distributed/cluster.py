"""A whole distributed deployment on loopback, every part a real process: redis-server (AOF),
SeaweedFS (S3), Triton (PyTriton), one or more `fitroom worker` per stage, and `fitroom serve`.

Settings are shortened so failures show within seconds: the broker hands a dead worker's task to
another after VISIBILITY_TIMEOUT_S, and retries back off from 0.2 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import PROJECT_ROOT
from services.distributed.queues import QUEUES
from tests.gateway.helpers import Server
from tests.redis_server import RedisProcess, redis_server
from tests.s3_server import S3Server, seaweedfs
from tests.triton_server import TritonProcess, _descendants, triton_process

# Short enough that the recovery tests wait seconds, not minutes (a stage's task takes 1 to 3 s here;
# 30 / 35 made three tests wait over a minute each), with room for a loaded machine.
TASK_TIME_LIMIT_S = 20
VISIBILITY_TIMEOUT_S = 25
STALL_TIMEOUT_S = VISIBILITY_TIMEOUT_S + TASK_TIME_LIMIT_S  # Settings.stall_timeout_s: a lost task is sent again
WORKER_READY_TIMEOUT_S = 90


def cluster_env(redis: RedisProcess, s3: S3Server, triton: TritonProcess | None, data_dir: Path) -> dict[str, str]:
    """What every process of the deployment is configured with (the ConfigMap, in k8s terms)."""
    return {
        **os.environ,
        **s3.environ(),
        "PYTHONUNBUFFERED": "1",
        "FITROOM_MODE": "distributed",
        "FITROOM_DATA_DIR": str(data_dir),
        "FITROOM_REDIS_URL": redis.url,
        "FITROOM_STORAGE": "s3",
        "FITROOM_S3_BUCKET": s3.bucket,
        "FITROOM_S3_ENDPOINT_URL": s3.endpoint_url,
        "FITROOM_S3_REGION": s3.region,
        "FITROOM_S3_PREFIX": "fitroom-test",
        "FITROOM_S3_TIMEOUT_S": "5",
        "FITROOM_INFERENCE": "triton" if triton else "local",
        "FITROOM_TRITON_URL": triton.grpc_url if triton else "",
        "FITROOM_TRITON_TIMEOUT_S": "10",
        "FITROOM_TRITON_RETRIES": "1",
        "FITROOM_TRITON_RETRY_BACKOFF_S": "0.2",
        "FITROOM_TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
        "FITROOM_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        # Enough retries (about 13 s of backoff) to outlast a SeaweedFS restart on a loaded
        # machine: with 4 (3 s) the S3-outage test failed once in a fresh clone.
        "FITROOM_TASK_RETRIES": "8",
        "FITROOM_TASK_RETRY_BACKOFF_S": "0.2",
        "FITROOM_TASK_RETRY_BACKOFF_MAX_S": "2",
        "FITROOM_JOB_DEADLINE_S": "600",
        "FITROOM_QUEUE_SIZE": "1000",
        # Torch threads are left at their default, as in the embedded reference: on the CPU a float
        # sum split over another number of threads rounds differently, and a landmark moved by a
        # tenth of a pixel moves a label boundary.
    }


@dataclass
class WorkerProcess:
    stage: str
    name: str  # its --name: the node is <name>@<host>
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """Started and serving its queue (it logs " ready." once its models are loaded)."""
        return self.alive() and " ready." in self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: a crash, not a shutdown (no task is handed back)."""
        pids = [self.process.pid, *_descendants(self.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)

    def kill_pool_process(self) -> bool:
        """SIGKILL only the pool process that runs tasks (as the OOM killer would); False if none."""
        children = _descendants(self.process.pid)
        if not children:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(children[0], signal.SIGKILL)
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Workers:
    env: dict[str, str]
    log_dir: Path
    running: list[WorkerProcess] = field(default_factory=list)
    _started: int = 0

    def start(self, stage: str, wait: bool = True, *options: str) -> WorkerProcess:
        self._started += 1
        name = f"{stage}{self._started}"
        log_path = self.log_dir / f"worker-{stage}-{self._started}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "services.cli", "worker", "--stage", stage),
                    *("--name", name, *options),
                ],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(stage, name, process, log_path)
        self.running.append(worker)
        if wait:
            self.wait_ready([worker])
        return worker

    def start_all(self, per_stage: int = 1) -> list[WorkerProcess]:
        started = [self.start(stage, wait=False) for _ in range(per_stage) for stage in QUEUES]
        self.wait_ready(started)
        return started

    def wait_ready(self, workers: list[WorkerProcess], timeout: float = WORKER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        for worker in workers:
            while not worker.ready():
                if not worker.alive():
                    raise RuntimeError(f"worker {worker.stage} exited:\n{worker.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {worker.stage} not ready after {timeout} s:\n{worker.log()}")
                time.sleep(0.1)

    def of(self, stage: str) -> list[WorkerProcess]:
        return [w for w in self.running if w.stage == stage and w.alive()]

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()
        self.running.remove(worker)

    def kill_all(self) -> None:
        for worker in list(self.running):
            self.kill(worker)


@dataclass
class Cluster:
    redis: RedisProcess
    s3: S3Server
    triton: TritonProcess | None
    workers: Workers
    gateway: Server

    @property
    def env(self) -> dict[str, str]:
        return self.workers.env


@contextlib.contextmanager
def cluster(
    workdir: Path, use_triton: bool = True, workers_per_stage: int = 1, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Every server started, workers ready, the gateway answering /readyz; all stopped afterwards.
    `env` adds to (or overrides) every process's settings."""
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(workdir / "redis", appendonly=True))
        s3 = stack.enter_context(seaweedfs(workdir / "s3"))
        triton = (
            stack.enter_context(triton_process(PROJECT_ROOT / "triton_models", workdir / "triton"))
            if use_triton
            else None
        )
        env = {**cluster_env(redis, s3, triton, workdir / "data"), **(env or {})}
        workers = Workers(env, workdir)
        stack.callback(workers.kill_all)
        gateway = Server(workdir / "gateway", env=env)
        gateway.start()
        stack.callback(gateway.stop)
        workers.start_all(workers_per_stage)
        yield Cluster(redis, s3, triton, workers, gateway)
