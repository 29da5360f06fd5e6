"""A real Triton Inference Server serving triton_models/ for the tests, through NVIDIA PyTriton.

PyTriton bundles tritonserver 2.51 (CPU here) and runs Python callables as its models: every
model of the repository is bound to a callable that executes its 1/model.pt with torch.jit (the
LocalBackend, so the server computes exactly what the embedded mode computes), declared with the
names, types, dims and max_batch_size of its config.pbtxt. What the tests exercise is therefore
the real network path: tritonclient, Triton's gRPC and HTTP front ends, its dynamic batcher.

Run it as a process:

    python -m tests.triton_server --repository triton_models --grpc-port 8001 --http-port 8000 --metrics-port 8002

or from a test, as a subprocess on free ports that can be killed and started again:

    with triton_process(repository, tmp_path) as server:
        backend = TritonBackend(server.grpc_url, "grpc", repository)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch

from services.common.inference import LocalBackend
from services.common.model_repository import ModelSignature, TensorSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120.0
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies

Requests = Sequence[dict[str, np.ndarray]]
InferFunc = Callable[[Requests], list[dict[str, np.ndarray]]]


def repository_models(repository: Path) -> list[str]:
    """Names of the models in the repository: folders with a config.pbtxt and a built 1/model.pt."""
    return sorted(
        p.parent.name for p in Path(repository).glob("*/config.pbtxt") if (p.parent / "1" / "model.pt").exists()
    )


def python_library_env() -> dict[str, str]:
    """The environment the bundled python-backend stub needs on this interpreter.

    The stub links libpython3.11 dynamically; without the interpreter's own lib folder first on
    LD_LIBRARY_PATH it finds Debian's libpython3.11, whose ABI differs (`_recursion_count`).
    """
    library = Path(sys.base_prefix) / "lib"
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": f"{library}:{current}" if current else str(library)}


def model_function(backend: LocalBackend, signature: ModelSignature) -> InferFunc:
    """The callable Triton runs for one model: each request (or a dynamic batch of them) through LocalBackend."""
    batched = signature.max_batch_size > 0

    def infer(requests: Requests) -> list[dict[str, np.ndarray]]:
        inputs = [{spec.name: request[spec.name] for spec in signature.inputs} for request in requests]
        same_shapes = all(all(r[name].shape[1:] == inputs[0][name].shape[1:] for name in r) for r in inputs)
        if not batched or len(inputs) == 1 or not same_shapes:
            return [backend(signature.name, request) for request in inputs]
        # One model call for the whole dynamic batch, split back by each request's batch size.
        outputs = backend(signature.name, {name: np.concatenate([r[name] for r in inputs]) for name in inputs[0]})
        bounds = np.cumsum([r[signature.inputs[0].name].shape[0] for r in inputs])[:-1]
        split = {name: np.split(array, bounds) for name, array in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(inputs))]

    return infer


def _tensors(specs: Sequence[TensorSpec]) -> list[object]:
    from pytriton.model_config import Tensor

    return [Tensor(name=spec.name, dtype=np.dtype(spec.dtype), shape=spec.dims) for spec in specs]


def serve(
    repository: Path,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    workspace: Path | None = None,
    torch_threads: int = 0,
) -> None:
    """Serve every model of `repository` until SIGINT or SIGTERM.

    `torch_threads` (0: torch's default) matters for exact comparisons: a convolution's float32
    sums come out differently split over 1 or 2 threads (1e-3 apart on pose_detection's boxes).
    """
    os.environ.update(python_library_env())  # inherited by tritonserver and its stubs
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    backend = LocalBackend(Path(repository), threads=torch_threads)
    config = TritonConfig(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        # On SIGINT Triton waits this long for clients' open keep-alive connections (default 30 s).
        exit_timeout_secs=2,
    )
    # SIGTERM as SIGINT: PyTriton's serve() then stops tritonserver and its stubs before returning.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    triton = Triton(config=config, workspace=workspace)
    for name in repository_models(repository):
        signature, _ = backend.load(name)
        triton.bind(
            model_name=name,
            infer_func=model_function(backend, signature),
            inputs=_tensors(signature.inputs),
            outputs=_tensors(signature.outputs),
            config=ModelConfig(
                batching=signature.max_batch_size > 0,
                max_batch_size=max(signature.max_batch_size, 1),
                batcher=DynamicBatcher(max_queue_delay_microseconds=2000),
            ),
            strict=True,
        )
    triton.serve()  # returns after SIGINT, having stopped tritonserver


def _terminate_with_parent() -> None:
    """In the server's child process before exec: SIGTERM it (a clean stop) if the test process dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (tritonserver and its python-backend stubs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the 2nd field after the parenthesised command name.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _stub_model_folders(pids: list[int]) -> list[Path]:
    """The temporary model folders (<tmp>/folderXXXX/1/model.py) that Triton's python-backend stubs run from.

    tritonserver writes them for models loaded through its API and removes them only on a clean exit.
    """
    temp = Path(tempfile.gettempdir())
    found: set[Path] = set()
    for pid in pids:
        with suppress(OSError):
            for arg in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"):
                path = Path(arg)
                if path.name == "model.py" and path.parents[2] == temp and path.parents[1].name.startswith("folder"):
                    found.add(path.parents[1])
    return sorted(found)


def _shared_memory_files(pids: list[int]) -> list[Path]:
    """The /dev/shm files the processes have mapped, from /proc/<pid>/maps."""
    found: set[Path] = set()
    for pid in pids:
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
                if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                    found.add(Path(fields[5].removesuffix(" (deleted)")))
    return sorted(found)


class TritonProcess:
    """`python -m tests.triton_server` as a subprocess in its own process group, on fixed ports."""

    def __init__(self, repository: Path, workdir: Path, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.repository = Path(repository).resolve()
        self.workdir = Path(workdir)
        self.startup_timeout_s = startup_timeout_s
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.models = repository_models(self.repository)
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0  # how long the last start() took until every model was ready
        self._runs = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"triton-{self._runs}.log"

    def start(self) -> None:
        """Start the server (again, on the same ports) and wait until it and every model are ready."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the Triton server is already running")
        self._runs += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "tests.triton_server",
            "--repository", str(self.repository),
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port),
            "--workspace", str(self.workdir / f"workspace-{self._runs}"),
            "--torch-threads", str(torch.get_num_threads()),  # this process's: the same float32 sums
        ]  # fmt: skip
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.startup_s = time.perf_counter() - started

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        paths = ["/v2/health/ready"] + [f"/v2/models/{name}/ready" for name in self.models]
        while paths:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the Triton server exited ({self.process.returncode}):\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the Triton server was not ready in {self.startup_timeout_s} s:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.http_url}{paths[0]}", timeout=2) as response:
                    if response.status == 200:
                        paths.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _signal_all(self, sig: signal.Signals) -> None:
        """`sig` to the server's process group and to every descendant (one may have left the group)."""
        if self.process is None:
            return
        for pid in _descendants(self.process.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def pause(self) -> None:
        """SIGSTOP every server process: connections are accepted by the kernel but never answered."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server and all its processes at once (an outage, not a shutdown), then remove
        the files they would have removed on a clean exit (megabytes of /dev/shm and the stubs'
        model folders)."""
        if self.process is None:
            return
        pids = [self.process.pid, *_descendants(self.process.pid)]
        leftovers = _shared_memory_files(pids) + _stub_model_folders(pids)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._wait_ports_free()
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _wait_ports_free(self, timeout_s: float = 10.0) -> None:
        """Until nothing listens on the ports (the killed tritonserver may take a moment to go)."""
        deadline = time.monotonic() + timeout_s
        for port in (self.grpc_port, self.http_port):
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) != 0:
                        break
                time.sleep(0.1)


@contextmanager
def triton_process(repository: Path, workdir: Path) -> Iterator[TritonProcess]:
    """A started Triton server on free ports; killed (with every process it started) on exit. Not
    shut down gracefully: PyTriton's shutdown took 6 s a server, and nothing here tests it."""
    server = TritonProcess(repository, workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "triton_models")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--workspace", type=Path, default=None, help="PyTriton's workspace (must not exist)")
    parser.add_argument("--torch-threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    serve(args.repository, args.grpc_port, args.http_port, args.metrics_port, args.workspace, args.torch_threads)


if __name__ == "__main__":
    main()
