"""The `garment_warp` model: dense thin-plate-spline warp of a garment onto the person's canvas.

The splines are fitted on the CPU (a few dozen points, services/warp/tps.py); this model does
the per-pixel work, which is what a GPU is for: each part's spline is evaluated on a grid at a
quarter of the canvas resolution (a spline is smooth, so bilinear upsampling of its grid loses
nothing visible), the garment is sampled through every part's grid at full resolution, only in
the box of the canvas that the grids map into the garment image, and the parts are composited
in order (part 0 at the back); parts with no alpha are skipped.

It has no weights, so it is built from this file by `fitroom models build`, like the imported
models, and served by Triton the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.model_repository import ModelSignature, TensorSpec, install_model
from services.warp.tps import MAX_POINTS

NAME = "garment_warp"
PARTS = 3  # torso + two limbs (sleeves or trouser legs); absent parts have zero alpha
GRID_STRIDE = 4  # the spline is evaluated every GRID_STRIDE canvas pixels
VERSION = 5  # bump when the module changes, so that installed copies are rebuilt

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("rgb__0", (1, 3, -1, -1), np.float32),  # garment colours in [0, 1]
        TensorSpec("part_alpha__1", (1, PARTS, -1, -1), np.float32),  # each part's alpha, garment space
        TensorSpec("control_points__2", (1, PARTS, MAX_POINTS, 2), np.float32),  # canvas units
        TensorSpec("weights__3", (1, PARTS, MAX_POINTS + 3, 2), np.float32),
        TensorSpec("canvas_size__4", (1, 2), np.int32),  # output height, width
    ),
    outputs=(TensorSpec("warped__0", (1, 4, -1, -1), np.float32),),  # RGBA on the canvas
    max_batch_size=0,  # every request has its own canvas size
)


class GarmentWarp(nn.Module):
    __constants__ = ("stride", "parts")  # TorchScript treats these attributes as constants

    def __init__(self) -> None:
        super().__init__()
        self.stride = GRID_STRIDE
        self.parts = PARTS

    def forward(
        self,
        rgb: torch.Tensor,
        part_alpha: torch.Tensor,
        control_points: torch.Tensor,
        weights: torch.Tensor,
        canvas_size: torch.Tensor,
    ) -> torch.Tensor:
        height, width = int(canvas_size[0, 0]), int(canvas_size[0, 1])
        device = rgb.device  # every tensor made here goes where Triton put the inputs (GPU or CPU)
        grid_h, grid_w = (height - 1) // self.stride + 2, (width - 1) // self.stride + 2
        unit = float(max(height, width))
        ys = torch.linspace(0.0, float(height - 1), grid_h, device=device) / unit
        xs = torch.linspace(0.0, float(width - 1), grid_w, device=device) / unit
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # (M, 2)

        # Each present part's spline on the coarse grid, and where it lands inside the garment image.
        n = control_points.shape[2]
        coarse_grids: list[torch.Tensor] = []
        present: list[int] = []
        inside = torch.zeros(grid_h, grid_w, dtype=torch.bool, device=device)
        for p in range(self.parts):
            if not bool((part_alpha[0, p] > 0).any()):  # an absent part costs nothing
                continue
            source, w = control_points[0, p], weights[0, p]  # (N, 2), (N + 3, 2)
            r2 = ((points[:, None, :] - source[None, :, :]) ** 2).sum(-1)  # (M, N)
            mapped = r2 * torch.log(r2.clamp_min(1e-12)) @ w[:n] + w[n : n + 1] + points @ w[n + 1 :]  # (M, 2)
            coarse = mapped.reshape(grid_h, grid_w, 2)
            inside |= (coarse.abs() <= 1.0).all(dim=-1)
            coarse_grids.append(coarse.permute(2, 0, 1).unsqueeze(0))
            present.append(p)
        output = torch.zeros(1, 4, height, width, device=device)
        rows = torch.nonzero(inside.any(dim=1)).flatten()
        cols = torch.nonzero(inside.any(dim=0)).flatten()
        if rows.numel() == 0:
            return output
        # Only the canvas box the garment can reach is sampled at full resolution: a coarse cell
        # beyond the last one inside can still reach in, so the box grows by one cell each way.
        to_canvas_y, to_canvas_x = (height - 1) / (grid_h - 1), (width - 1) / (grid_w - 1)
        y0 = max(0, int(float(rows[0] - 1) * to_canvas_y))
        y1 = min(height, int(float(rows[-1] + 1) * to_canvas_y) + 2)
        x0 = max(0, int(float(cols[0] - 1) * to_canvas_x))
        x1 = min(width, int(float(cols[-1] + 1) * to_canvas_x) + 2)
        # The box's pixels in the coarse grid's own [-1, 1] coordinates (align_corners: the grid's
        # first and last nodes sit on the canvas's first and last pixels).
        fine_y = torch.arange(y0, y1, dtype=torch.float32, device=device) / float(height - 1) * 2.0 - 1.0
        fine_x = torch.arange(x0, x1, dtype=torch.float32, device=device) / float(width - 1) * 2.0 - 1.0
        at_y, at_x = torch.meshgrid(fine_y, fine_x, indexing="ij")
        box = torch.stack([at_x, at_y], dim=-1).unsqueeze(0)  # (1, bh, bw, 2)

        colour = torch.zeros(3, y1 - y0, x1 - x0, device=device)
        alpha = torch.zeros(1, y1 - y0, x1 - x0, device=device)
        for i in range(len(present)):  # "over" compositing, part 0 at the back
            mask = part_alpha[0, present[i]].unsqueeze(0).unsqueeze(0)  # (1, 1, Hg, Wg)
            grid = F.grid_sample(coarse_grids[i], box, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
            # Premultiplied: the backdrop's colour outside the mask never bleeds into the edge.
            source_image = torch.cat([rgb * mask, mask], dim=1)
            part = F.grid_sample(source_image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
            a = part[3:4]
            colour = part[:3] + colour * (1.0 - a)
            alpha = a + alpha * (1.0 - a)
        colour = colour / alpha.clamp_min(1e-6)
        output[0, :, y0:y1, x0:x1] = torch.cat([colour.clamp(0.0, 1.0), alpha], dim=0)
        return output


def export(path: Path) -> None:
    scripted = torch.jit.script(GarmentWarp().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))


def build(repository: Path, force: bool = False) -> bool:
    """Install garment_warp into the repository; False when the installed copy is current."""
    source = {"module": "services.warp.model.GarmentWarp", "version": VERSION, "grid_stride": GRID_STRIDE}
    return install_model(repository, SIGNATURE, source, export, force)
