"""The models of the distributed mode's GPU path: each triton_models/<name>/1/model.pt on a CUDA
device against the same machine's CPU, on the inputs of a real 768x1024 try-on.

Triton's pytorch_libtorch backend runs exactly these TorchScript files, so this is the model time
a stage sees on a GPU node, before Triton's own queueing and transfer. Two steps, because the GPU
machine may lack this project's dependencies (it needs only torch and numpy):

    .venv/bin/python bench/gpu_models.py record out/gpu_inputs.npz   # here: one try-on's model calls
    python3 bench/gpu_models.py run out/gpu_inputs.npz triton_models # there: CPU vs CUDA timings
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def record(path: Path) -> None:
    """Run one cold try-on at 768x1024 and save every model call's inputs, in call order."""
    import tempfile

    import cv2
    from skimage import data

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from services.common.artifacts import LocalArtifactStore
    from services.common.inference import embedded_backend
    from services.pipeline import Pipeline
    from tests.warp.drawn import TEE, product_image

    backend = embedded_backend()
    saved: dict[str, np.ndarray] = {}

    def recording(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call = sum(1 for key in saved if key.endswith("/__model__"))
        saved[f"{call:02d}/__model__"] = np.frombuffer(model.encode(), np.uint8)
        for name, array in inputs.items():
            saved[f"{call:02d}/{name}"] = np.ascontiguousarray(array)
        return backend(model, inputs)

    person = cv2.resize(data.astronaut(), (768, 1024), interpolation=cv2.INTER_CUBIC)
    Pipeline(LocalArtifactStore(tempfile.mkdtemp()), recording).tryon(person, product_image(TEE))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **saved)
    print(f"{sum(1 for k in saved if k.endswith('/__model__'))} model calls saved to {path}")


def time_calls(model_file: Path, args: list[torch.Tensor], device: str, runs: int) -> tuple[list[float], torch.Tensor]:
    # Loaded onto the device, as Triton's libtorch backend loads it: map_location also moves the
    # constants that the TFLite importer bakes into the graph, which `.to(device)` leaves behind.
    module = torch.jit.load(str(model_file), map_location=device).eval()
    args = [a.to(device) for a in args]
    times = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernel selection, allocator
            module(*args)
        for _ in range(runs):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(*args)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - start))
        first = module(*args)
    return times, (first[0] if isinstance(first, tuple) else first).cpu()


def run(path: Path, repository: Path, runs: int) -> None:
    saved = np.load(path)
    calls: dict[str, list[torch.Tensor]] = {}
    for key in sorted(k for k in saved.files if k.endswith("/__model__")):
        prefix = key.split("/")[0]
        model = saved[key].tobytes().decode()
        names = sorted(k for k in saved.files if k.startswith(prefix + "/") and k != key)
        # Inputs are named <name>__<index>: order them by index, as the model takes them.
        names.sort(key=lambda k: int(k.rsplit("__", 1)[1]))
        calls.setdefault(model, [torch.from_numpy(saved[k]) for k in names])  # first call of each model
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"models on the inputs of one 768x1024 try-on; torch {torch.__version__}; GPU: {gpu}; "
        f"CPU threads {torch.get_num_threads()}; {runs} runs each"
    )
    print("| model | cpu median ms | cpu p90 | cuda median ms | cuda p90 | cpu / cuda | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = dict.fromkeys(devices, 0.0)
    for model, args in calls.items():
        row, answers = {}, {}
        for device in devices:
            times, answers[device] = time_calls(repository / model / "1" / "model.pt", args, device, runs)
            row[device] = (float(np.median(times)), float(np.quantile(times, 0.9)))
            totals[device] += row[device][0]
        # The first output, GPU against CPU: the same model file must give the same answer.
        diff = (answers["cuda"] - answers["cpu"]).abs().max().item() if "cuda" in answers else float("nan")
        cuda = row.get("cuda", (float("nan"), float("nan")))
        print(
            f"| {model} | {row['cpu'][0]:.2f} | {row['cpu'][1]:.2f} | {cuda[0]:.2f} | {cuda[1]:.2f} | "
            f"{row['cpu'][0] / cuda[0]:.1f} | {diff:.2g} |"
        )
    cuda_total = totals.get("cuda", float("nan"))
    print(
        f"| all models of one try-on | {totals['cpu']:.2f} | | {cuda_total:.2f} | | {totals['cpu'] / cuda_total:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("inputs", type=Path)
    go = commands.add_parser("run")
    go.add_argument("inputs", type=Path)
    go.add_argument("repository", type=Path)
    go.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if args.command == "record":
        record(args.inputs)
    else:
        run(args.inputs, args.repository, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
