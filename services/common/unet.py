"""The small U-Net the learned stages are built on (the GMM warp and the try-on generator).

Four levels of two 3x3 convolutions with group norm and SiLU, average-pool down, bilinear up,
skip connections concatenated. Inputs of any size: they are padded to a multiple of 2^(levels-1)
and the output cropped back. Scriptable, and only ops that Triton's libtorch has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_bilinear(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bilinear resize through the ATen op itself: scripting F.interpolate copies the whole Python
    function, whose branches name ops that older libtorch builds (Triton's) do not have."""
    return torch._C._nn.upsample_bilinear2d(x, size, False, None)


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


class UNet(nn.Module):
    """`inputs` channels in, `outputs` channels out (a 1x1 head, no activation), same size."""

    __constants__ = ("multiple",)

    def __init__(self, inputs: int, outputs: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.multiple = 2 ** (len(widths) - 1)
        chans = list(widths)
        self.down = nn.ModuleList([Block(a, b) for a, b in zip([inputs, *chans[:-1]], chans, strict=True)])
        self.up = nn.ModuleList([Block(a + b, b) for a, b in zip(chans[:0:-1], chans[-2::-1], strict=True)])
        self.head = nn.Conv2d(chans[0], outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([resize_bilinear(x, list(skip.shape[-2:])), skip], dim=1))
        return self.head(x)[:, :, :height, :width]


def mirrored_batch(x: torch.Tensor) -> torch.Tensor:
    """(2N, C, H, W): the batch `x` followed by its mirror image, for a served network whose
    `mirror_average` is on (see `mirror_mean`)."""
    return torch.cat([x, x.flip(3)])


def mirror_mean(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) from a network's output for a `mirrored_batch`: each image's answer averaged
    with its mirror image's, mirrored back.

    The learned networks are trained on mirrored batches as often as not, so the two are equally
    good guesses whose errors partly cancel (figures beside each network's `mirror_average`). They
    are served so (`fitroom models install` turns `mirror_average` on): one pass over a batch of
    two, which on a 2-core CPU takes about 0.8 of two passes over one (the try-on generator at
    768x1024: 46 against 2 x 30 ms)."""
    n = y.shape[0] // 2
    return (y[:n] + y[n:].flip(3)) * 0.5


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
