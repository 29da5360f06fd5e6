"""The `tryon_generator` model: the learned try-on module (CP-VTON's TOM), a residual over fusion.

tryon_fusion (services/fusion/model.py) already paints the repaint region and lays the garment
with the old garment's light; what it gets wrong (seams, hems and sleeve ends, shading, what is
in front of what) is learned here from paired photos. A U-Net at WORK_HEIGHT looks at the fused
photo, the learned warp of the garment and the editable region, and predicts three layers:

- a rendered layer: the fused photo's light, a multiplier of its colours (the shadow a garment
  casts, a crease at the waist), never a colour of its own;
- a shade: a multiplier for the garment's colours (its folds and light);
- a composition mask: where the warped garment's own pixels show.

The layers are smooth, so at a photo's full resolution they are predicted at WORK_HEIGHT and
scaled up; the garment's pixels come from the full-resolution warp of the flat-lay, so its
print stays sharp, and the mask is multiplied by the full-resolution alpha, so its edges do too:

    out = e * (m * (garment * shade) + (1 - m) * (fused * light)) + (1 - e) * fused

where e is the editable region (outside it the photo is the fused photo, which there is the
person's own). No default weights: `fitroom train tryon` trains it (services/train.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.model_repository import ModelSignature, TensorSpec
from services.common.unet import UNet, resize_bilinear
from services.warp.gmm import premultiplied

NAME = "tryon_generator"
WORK_HEIGHT = 128  # the layers are smooth: predicted at half the training height (CPU-sized), scaled up
WIDTHS = (24, 48, 96, 192)
IN_CHANNELS = 3 + 4 + 1  # fused photo, warped garment (premultiplied RGB, alpha), editable region
SHADE_RANGE = 0.5  # the shade and the light are exp(SHADE_RANGE * tanh(.)): 0.61 to 1.65
# The rendered layer multiplies the fused photo by one channel of light. As an added RGB correction
# it learned (paired data: just below a hem there is always more of the garment) to paint the
# garment's colour past the hem, and on a shorter garment that showed as a band of colour over the
# skirt (the first GPU run's unpaired sheet). Fusion paints the skin and fills; this only lights them.
LAYERS = 3  # the light, the composition mask, the shade
# Inside the warped garment the composition mask stays between MASK_FLOOR and 1: the rendered
# layer may shade and soften the garment but not paint over it. Free to reach 0, the mask learned
# (paired data, where the old garment is the new one) to let the rendered layer repaint the
# garment from the old garment's colours around it: on unseen pairs a white tee came out red.
MASK_FLOOR = 0.9

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("fused__0", (1, 3, -1, -1), np.float32),  # tryon_fusion's output, RGB in [0, 1]
        TensorSpec("garment__1", (1, 4, -1, -1), np.float32),  # the (learned) warped garment, straight RGBA
        TensorSpec("editable__2", (1, 1, -1, -1), np.float32),  # where the photo may change, 0 or 1
    ),
    outputs=(TensorSpec("tryon__0", (1, 3, -1, -1), np.float32),),
    max_batch_size=0,
)


class TryonGenerator(nn.Module):
    __constants__ = ("work_height", "shade_range", "mask_floor")

    def __init__(self) -> None:
        super().__init__()
        self.work_height = WORK_HEIGHT
        self.shade_range = SHADE_RANGE
        self.mask_floor = MASK_FLOOR
        self.unet = UNet(IN_CHANNELS, LAYERS, WIDTHS)
        with torch.no_grad():  # start as fusion: no light, no shade, the mask half-way above its floor
            self.unet.head.weight.zero_()
            self.unet.head.bias.zero_()

    def layers(
        self, fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the try-on, the composition mask m), both at the inputs' size."""
        height, width = fused.shape[-2:]
        inputs = [fused, premultiplied(garment), editable]
        small = height > self.work_height
        if small:  # each input pooled on its own: no full-size copy of them all
            size = [self.work_height, max(8, int(round(width * self.work_height / height)))]  # noqa: RUF046 (TorchScript's round gives a float)
            inputs = [F.adaptive_avg_pool2d(x, size) for x in inputs]
        maps = self.unet(torch.cat(inputs, dim=1))
        layers = torch.cat(
            [
                torch.exp(self.shade_range * torch.tanh(maps[:, 0:1])),  # the light
                self.mask_floor + (1.0 - self.mask_floor) * torch.sigmoid(maps[:, 1:2]),  # the mask, before alpha
                torch.exp(self.shade_range * torch.tanh(maps[:, 2:3])),  # the shade
            ],
            dim=1,
        )
        if small:  # the nonlinearities ran at the work size: three smooth maps scaled up
            layers = resize_bilinear(layers, [height, width])
        render = (fused * layers[:, 0:1]).clamp(0.0, 1.0)
        mask = layers[:, 1:2] * garment[:, 3:4]
        shaded = (garment[:, 0:3] * layers[:, 2:3]).clamp(0.0, 1.0)
        tryon = mask * shaded + (1.0 - mask) * render
        return editable * tryon + (1.0 - editable) * fused, mask

    def forward(self, fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor) -> torch.Tensor:
        return self.layers(fused, garment, editable)[0]
