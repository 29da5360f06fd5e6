"""Training for tryon_refiner (services/fusion/refiner.py) on the user's own paired photos.

Paired data, VITON's layout: each line of PAIRS names a person photo and the product image of
the garment that person wears, so the person photo is the answer. Each pair goes through the
pipeline once (pose, parse, warp, fusion: the refiner learns to correct exactly what fusion
gives it); the examples are resized to one training size and can be kept in an .npz cache.
The loss is L1 plus (1 - SSIM) on grey, with the SSIM of the benchmarks (Gaussian window,
sigma 1.5). A held-out share of the pairs scores the refiner against fusion alone as it trains.

Nothing here downloads anything, and the checkpoint it installs is only as shareable as the
data it was trained on: a model trained on VITON, VITON-HD or DressCode is research-only and
never a default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from services.common.contracts import Category
from services.common.errors import FitroomError
from services.common.imageio import read_image_file
from services.fusion import stage as fusion_stage
from services.fusion.refiner import TryonRefiner
from services.pipeline import Pipeline

Log = Callable[[str], None]


@dataclass(frozen=True)
class Examples:
    """N training examples at one size, as uint8 arrays: the answer, fusion's output, the warped
    garment (RGBA) and the editable mask (0 or 255)."""

    target: np.ndarray  # N x H x W x 3
    fused: np.ndarray  # N x H x W x 3
    garment: np.ndarray  # N x H x W x 4
    editable: np.ndarray  # N x H x W

    def __len__(self) -> int:
        return len(self.target)

    def save(self, path: Path) -> None:
        np.savez(path, target=self.target, fused=self.fused, garment=self.garment, editable=self.editable)

    @classmethod
    def load(cls, path: Path) -> Examples:
        with np.load(path) as data:
            return cls(data["target"], data["fused"], data["garment"], data["editable"])

    def split(self, indices: np.ndarray) -> Examples:
        return Examples(self.target[indices], self.fused[indices], self.garment[indices], self.editable[indices])

    def tensors(self, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(target, fused, garment, editable) of `indices` as float tensors in [0, 1], N x C x H x W."""
        as_nchw = lambda x: torch.from_numpy(x[indices]).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
        editable = torch.from_numpy(self.editable[indices])[:, None].float() / 255.0
        return as_nchw(self.target), as_nchw(self.fused), as_nchw(self.garment), editable


def prepare(
    pipeline: Pipeline,
    pairs: list[tuple[Path, Path]],
    size: tuple[int, int],
    category: Category | None = None,
    log: Log = print,
) -> Examples:
    """Run each (person, garment) pair through the pipeline; examples resized to `size` (w, h).
    Pairs the pipeline rejects (no person, no garment) are skipped and counted."""
    rows: dict[str, list[np.ndarray]] = {"target": [], "fused": [], "garment": [], "editable": []}
    skipped: dict[str, int] = {}
    area, nearest = cv2.INTER_AREA, cv2.INTER_NEAREST
    for n, (person_path, garment_path) in enumerate(pairs):
        try:
            person = read_image_file(person_path)
            garment_image = read_image_file(garment_path, rgba=True)
            analysis = pipeline.garment(garment_image, category)
            pose, parse = pipeline.person(person)
            dressed, warped = pipeline.warp(garment_image, analysis, pose, parse)
        except FitroomError as exc:
            skipped[exc.code] = skipped.get(exc.code, 0) + 1
            continue
        fused = fusion_stage.run(person, dressed, pose, warped, pipeline.infer)
        editable = fusion_stage.editable_region(fusion_stage.regions(person, dressed, pose, warped.category), warped)
        rows["target"].append(cv2.resize(person, size, interpolation=area))
        rows["fused"].append(cv2.resize(fused, size, interpolation=area))
        garment = np.round(warped.rgba * 255).astype(np.uint8)
        rows["garment"].append(cv2.resize(garment, size, interpolation=area))
        rows["editable"].append(cv2.resize(editable.astype(np.uint8) * 255, size, interpolation=nearest))
        if (n + 1) % 250 == 0:
            log(f"prepared {n + 1}/{len(pairs)}")
    if skipped:
        log(f"skipped: {skipped}")
    if not rows["target"]:
        raise ValueError("no pair made it through the pipeline")
    return Examples(*(np.stack(rows[k]) for k in ("target", "fused", "garment", "editable")))


def _gaussian_window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


WINDOW = _gaussian_window()


def grey_ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of N x 3 x H x W images in [0, 1], on grey (Rec. 601), Gaussian window
    sigma 1.5, as skimage's structural_similarity(gaussian_weights=True) that the benchmarks use."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x, y = (a * weights).sum(1, keepdim=True), (b * weights).sum(1, keepdim=True)
    blur = lambda t: F.conv2d(t, WINDOW, padding=WINDOW.shape[-1] // 2)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).abs().mean() + (1.0 - grey_ssim_map(out, target)).mean()


def evaluate(model: TryonRefiner, examples: Examples, batch_size: int = 16) -> tuple[float, float]:
    """Mean whole-image grey SSIM of fusion alone and of fusion + refiner against the answers."""
    fused_scores, refined_scores = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = np.arange(start, min(start + batch_size, len(examples)))
            target, fused, garment, editable = examples.tensors(batch)
            fused_scores.append(grey_ssim_map(fused, target).mean(dim=(1, 2, 3)))
            refined_scores.append(grey_ssim_map(model(fused, garment, editable), target).mean(dim=(1, 2, 3)))
    model.train()
    return float(torch.cat(fused_scores).mean()), float(torch.cat(refined_scores).mean())


def train(
    examples: Examples,
    steps: int,
    batch_size: int = 8,
    lr: float = 2e-3,
    validation: Examples | None = None,
    seed: int = 0,
    log: Log = print,
    log_every: int = 100,
) -> TryonRefiner:
    """AdamW with a cosine learning rate; random horizontal flips (a garment flipped is still one)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TryonRefiner(work_height=examples.target.shape[1]).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 2), pct_start=0.05)
    start, running = time.perf_counter(), []
    for step in range(1, steps + 1):
        target, fused, garment, editable = examples.tensors(rng.choice(len(examples), batch_size))
        if rng.random() < 0.5:
            target, fused, garment, editable = (t.flip(-1) for t in (target, fused, garment, editable))
        loss = loss_fn(model(fused, garment, editable), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            line = f"step {step}/{steps}  loss {np.mean(running):.4f}  {time.perf_counter() - start:.0f} s"
            if validation is not None and len(validation):
                fused_ssim, refined_ssim = evaluate(model, validation)
                line += f"  held-out SSIM: fusion {fused_ssim:.4f}, refined {refined_ssim:.4f}"
            log(line)
            running.clear()
    return model.eval()
