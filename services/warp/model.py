"""The `garment_warp` model: dense thin-plate-spline warp of a garment onto the person's canvas.

The splines are fitted on the CPU (a few dozen points, services/warp/tps.py); this model does
the per-pixel work, which is what a GPU is for: each part's spline is evaluated on a grid at a
quarter of the canvas resolution (a spline is smooth, so bilinear upsampling of its grid loses
nothing visible), the garment is sampled through every part's grid at full resolution, only in
the box of the canvas that the grids map into the garment image, and the parts are composited
in order (part 0 at the back); parts with no alpha are skipped. Each part shows only inside its
canvas mask: the body it may lie on (decided by the stage from the pose and parse) less what
is in front of it (hair, face; arms in front of the torso).

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
PARTS = 4  # inside back + two limbs (sleeves or trouser legs) + torso; absent parts have zero alpha
GRID_STRIDE = 4  # the spline is evaluated every GRID_STRIDE canvas pixels
VERSION = 13  # bump when the module changes, so that installed copies are rebuilt

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("rgb__0", (1, 3, -1, -1), np.float32),  # garment colours in [0, 1]
        TensorSpec("part_alpha__1", (1, PARTS, -1, -1), np.float32),  # each part's alpha, garment space
        TensorSpec("control_points__2", (1, PARTS, MAX_POINTS, 2), np.float32),  # canvas units
        TensorSpec("weights__3", (1, PARTS, MAX_POINTS + 3, 2), np.float32),
        TensorSpec("canvas_size__4", (1, 2), np.int32),  # output height, width
        TensorSpec("canvas_mask__5", (1, PARTS, -1, -1), np.uint8),  # 1 where each part may show
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
        canvas_mask: torch.Tensor,
    ) -> torch.Tensor:
        height, width = int(canvas_size[0, 0]), int(canvas_size[0, 1])
        device = rgb.device  # every tensor made here goes where Triton put the inputs (GPU or CPU)
        grid_h, grid_w = (height - 1) // self.stride + 2, (width - 1) // self.stride + 2
        to_canvas_y, to_canvas_x = (height - 1) / (grid_h - 1), (width - 1) / (grid_w - 1)
        unit = float(max(height, width))
        n = control_points.shape[2]
        colour = torch.zeros(3, height, width, device=device)
        alpha = torch.zeros(1, height, width, device=device)
        for p in range(self.parts):  # "over" compositing, part 0 at the back
            if not bool((part_alpha[0, p] > 0).any()):  # an absent part costs nothing
                continue
            shown = canvas_mask[0, p] > 0
            shown_rows = torch.nonzero(shown.any(dim=1)).flatten()
            shown_cols = torch.nonzero(shown.any(dim=0)).flatten()
            if shown_rows.numel() == 0:
                continue
            # The spline on the coarse grid nodes around the part's canvas mask (at least two each way).
            gy0 = min(int(float(shown_rows[0]) / to_canvas_y), grid_h - 2)
            gy1 = max(min(int(float(shown_rows[-1]) / to_canvas_y) + 1, grid_h - 1), gy0 + 1)
            gx0 = min(int(float(shown_cols[0]) / to_canvas_x), grid_w - 2)
            gx1 = max(min(int(float(shown_cols[-1]) / to_canvas_x) + 1, grid_w - 1), gx0 + 1)
            ys = torch.arange(gy0, gy1 + 1, dtype=torch.float32, device=device) * to_canvas_y / unit
            xs = torch.arange(gx0, gx1 + 1, dtype=torch.float32, device=device) * to_canvas_x / unit
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # (M, 2)
            source, w = control_points[0, p], weights[0, p]  # (N, 2), (N + 3, 2)
            # |p - s|^2 expanded, so that the (M, N) work is one matrix product
            cross = points @ source.permute(1, 0)
            r2 = ((points * points).sum(-1)[:, None] + (source * source).sum(-1)[None, :] - 2.0 * cross).clamp_min(0.0)
            mapped = r2 * torch.log(r2.clamp_min(1e-12)) @ w[:n] + w[n : n + 1] + points @ w[n + 1 :]  # (M, 2)
            coarse = mapped.reshape(gy1 - gy0 + 1, gx1 - gx0 + 1, 2)
            # The canvas box sampled at full resolution: where the spline lands inside the garment
            # image, grown by one coarse cell each way (a cell beyond the last one inside can
            # still reach in), and where the part's canvas mask is on.
            inside = (coarse.abs() <= 1.0).all(dim=-1)
            rows, cols = torch.nonzero(inside.any(dim=1)).flatten(), torch.nonzero(inside.any(dim=0)).flatten()
            if rows.numel() == 0:
                continue
            y0 = max(0, int(float(gy0 + rows[0] - 1) * to_canvas_y), int(shown_rows[0]))
            y1 = min(height, int(float(gy0 + rows[-1] + 1) * to_canvas_y) + 2, int(shown_rows[-1]) + 1)
            x0 = max(0, int(float(gx0 + cols[0] - 1) * to_canvas_x), int(shown_cols[0]))
            x1 = min(width, int(float(gx0 + cols[-1] + 1) * to_canvas_x) + 2, int(shown_cols[-1]) + 1)
            if y1 <= y0 or x1 <= x0:
                continue
            # The box's pixels in the coarse sub-grid's own [-1, 1] coordinates (align_corners:
            # its first and last nodes sit on canvas pixels gy0 * to_canvas_y and gy1 * to_canvas_y).
            fine_y = torch.arange(y0, y1, dtype=torch.float32, device=device) / to_canvas_y
            fine_x = torch.arange(x0, x1, dtype=torch.float32, device=device) / to_canvas_x
            at_y, at_x = torch.meshgrid(
                (fine_y - gy0) / float(gy1 - gy0) * 2.0 - 1.0,
                (fine_x - gx0) / float(gx1 - gx0) * 2.0 - 1.0,
                indexing="ij",
            )
            box = torch.stack([at_x, at_y], dim=-1).unsqueeze(0)  # (1, bh, bw, 2)
            grid = F.grid_sample(coarse.permute(2, 0, 1).unsqueeze(0), box, mode="bilinear", align_corners=True)
            # Only the garment pixels the box reads are prepared: a sleeve or the inside back
            # reads a small part of the garment image.
            g_h, g_w = rgb.shape[2], rgb.shape[3]
            px = (grid[0, 0] + 1.0) * 0.5 * float(g_w - 1)
            py = (grid[0, 1] + 1.0) * 0.5 * float(g_h - 1)
            cx0 = min(max(int(float(px.min())) - 1, 0), g_w - 2)
            cx1 = max(min(int(float(px.max())) + 2, g_w - 1), cx0 + 1)
            cy0 = min(max(int(float(py.min())) - 1, 0), g_h - 2)
            cy1 = max(min(int(float(py.max())) + 2, g_h - 1), cy0 + 1)
            local = torch.stack(
                [(px - float(cx0)) / float(cx1 - cx0) * 2.0 - 1.0, (py - float(cy0)) / float(cy1 - cy0) * 2.0 - 1.0],
                dim=-1,
            ).unsqueeze(0)
            mask = part_alpha[0:1, p : p + 1, cy0 : cy1 + 1, cx0 : cx1 + 1]  # (1, 1, h, w)
            # Premultiplied: the backdrop's colour outside the mask never bleeds into the edge.
            source_image = torch.cat([rgb[:, :, cy0 : cy1 + 1, cx0 : cx1 + 1] * mask, mask], dim=1)
            part = F.grid_sample(source_image, local, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
            part = part * shown[y0:y1, x0:x1].unsqueeze(0)
            a = part[3:4]
            colour[:, y0:y1, x0:x1] = part[:3] + colour[:, y0:y1, x0:x1] * (1.0 - a)
            alpha[:, y0:y1, x0:x1] = a + alpha[:, y0:y1, x0:x1] * (1.0 - a)
        return torch.cat([(colour / alpha.clamp_min(1e-6)).clamp(0.0, 1.0), alpha], dim=0).unsqueeze(0)


def export(path: Path) -> None:
    scripted = torch.jit.script(GarmentWarp().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))


def build(repository: Path, force: bool = False) -> bool:
    """Install garment_warp into the repository; False when the installed copy is current."""
    source = {"module": "services.warp.model.GarmentWarp", "version": VERSION, "grid_stride": GRID_STRIDE}
    return install_model(repository, SIGNATURE, source, export, force)
