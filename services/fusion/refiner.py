"""The `tryon_refiner` model: an optional learned last step after tryon_fusion.

tryon_fusion lays the flat-lay's own texture on the body; where that texture does not match
how the garment would really fall (creases, a print off by a few pixels, a hem at the wrong
height) only a model that has seen garments worn can do better. This is that model, small and
in one file: a U-Net (four levels, WIDTHS channels) that looks at the fused photo, the warped
garment and where it may change the photo, and renders a correction, blended in with a
predicted weight as CP-VTON's try-on module does: out = m * render + (1 - m) * fused. The
weight is zero outside the editable region (the repaint region and the new garment), so the
face, hands, background and lower garment are the fused photo's pixels exactly. It works at
the height it was trained at: taller photos get the correction computed there and scaled up.

It has no default weights: `fitroom train refiner` trains it on the user's own paired photos
(services/fusion/train_refiner.py) and installs it into the model repository;
FITROOM_REFINER=1 turns it on. A checkpoint trained on a research-only dataset (VITON,
VITON-HD, DressCode) must never be shipped or made the default.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.model_repository import ModelSignature, TensorSpec, install_model
from services.fusion.model import resize_bilinear

NAME = "tryon_refiner"
WIDTHS = (16, 32, 64, 128)
IN_CHANNELS = 3 + 4 + 1  # fused photo, warped garment RGBA, editable mask
MULTIPLE = 2 ** (len(WIDTHS) - 1)  # inputs are padded to a multiple of this

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("tryon__0", (1, 3, -1, -1), np.float32),  # tryon_fusion's output, RGB in [0, 1]
        TensorSpec("garment__1", (1, 4, -1, -1), np.float32),  # the warped garment, straight RGBA
        TensorSpec("editable__2", (1, 1, -1, -1), np.float32),  # where the photo may change, in [0, 1]
    ),
    outputs=(TensorSpec("refined__0", (1, 3, -1, -1), np.float32),),
    max_batch_size=0,
)


class Block(nn.Module):
    """Two 3x3 convolutions, each with group norm and SiLU."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, padding=1),
            nn.GroupNorm(4, outputs),
            nn.SiLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1),
            nn.GroupNorm(4, outputs),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TryonRefiner(nn.Module):
    """`work_height` is the height it was trained at: a taller photo is refined at that height
    (the network sees garments at the scale it learned them) and the correction is brought back
    up and added to the full-resolution fused photo, whose own detail stays."""

    __constants__ = ("multiple", "work_height")

    def __init__(self, work_height: int = 256) -> None:
        super().__init__()
        self.multiple = MULTIPLE
        self.work_height = work_height
        widths = list(WIDTHS)
        self.down = nn.ModuleList([Block(a, b) for a, b in zip([IN_CHANNELS, *widths[:-1]], widths, strict=True)])
        self.up = nn.ModuleList([Block(a + b, b) for a, b in zip(widths[:0:-1], widths[-2::-1], strict=True)])
        self.head = nn.Conv2d(widths[0], 4, 1)
        with torch.no_grad():  # start as the identity: the blend weight begins near zero
            self.head.bias[3] = -4.0

    def correction(self, tryon: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor) -> torch.Tensor:
        """What to add to `tryon`, at the inputs' own size: a rendering blended in by a predicted weight."""
        height, width = tryon.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = F.pad(torch.cat([tryon, garment, editable], dim=1), (0, pad_w, 0, pad_h), mode="replicate")
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([resize_bilinear(x, list(skip.shape[-2:])), skip], dim=1))
        out = self.head(x)[:, :, :height, :width]
        render = torch.sigmoid(out[:, 0:3])
        blend = torch.sigmoid(out[:, 3:4]) * editable
        return blend * (render - tryon)

    def forward(self, tryon: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor) -> torch.Tensor:
        height, width = tryon.shape[-2:]
        if height <= self.work_height:
            return tryon + self.correction(tryon, garment, editable)
        size = [self.work_height, max(1, int(round(width * self.work_height / height)))]  # noqa: RUF046 (TorchScript's round gives a float)
        small = [F.adaptive_avg_pool2d(x, size) for x in (tryon, garment, editable)]
        correction = resize_bilinear(self.correction(small[0], small[1], small[2]), [height, width])
        return (tryon + correction * editable).clamp(0.0, 1.0)


def weights_digest(model: TryonRefiner) -> str:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


def install(model: TryonRefiner, repository: Path, trained_on: str) -> bool:
    """Script the trained `model` into the repository as tryon_refiner (config.pbtxt and 1/model.pt)."""
    model = model.eval()

    def export(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.script(model).save(str(path))

    source = {
        "module": "services.fusion.refiner.TryonRefiner",
        "weights": weights_digest(model),
        "trained_on": trained_on,
    }
    return install_model(repository, SIGNATURE, source, export, force=True)
