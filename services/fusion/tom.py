"""The `tryon_generator` model: the learned try-on module (CP-VTON's TOM), a residual over fusion.

tryon_fusion (services/fusion/model.py) already paints the repaint region and lays the learned
warp of the garment with the old garment's light; what it gets wrong (seams, hems and sleeve
ends, shading, what is in front of what) is learned here from paired photos, but never the
learned warp's own errors: where it disagrees with the photo, training's answer is fusion's
(services/train.py `tryon_loss`). A U-Net at the warp's work size (gmm.work_size: 128 pixels
high, half the training photos) looks at the fused photo, the learned warp of the garment and
the editable region, and predicts three layers:

- a rendered layer: the fused photo's light, a multiplier of its colours (the shadow a garment
  casts, a crease at the waist), never a colour of its own;
- a shade: a multiplier for the garment's colours (its folds and light); a light garment takes
  only a share of it, as of fusion's folds (`fold_share`: on paired photos the shade learned a
  white garment's folds from the fused photo's light; on an unseen pair with nothing to copy,
  a dark old garment, it drew its average folds as grey blotches);
- a composition mask: where the warped garment's own pixels show.

The layers are smooth, so at a photo's full resolution they are predicted at the work size and
scaled up; the garment's pixels come from the full-resolution warp of the flat-lay, so its
print stays sharp, and the mask is multiplied by the full-resolution alpha, so its edges do too:

    out = e * (m * (garment * shade) + (1 - m) * (fused * light)) + (1 - e) * fused

where e is the editable region (outside it the photo is the fused photo, which there is the
person's own). The served model is the network alone: its inputs pooled to the work size in, the
three layers at the work size out; scaling them up and `compose` are the stage's, inside the
editable region's box (services/fusion/stage.py), and training's (`TryonGenerator.tryon`).
No default weights: `fitroom train tryon` trains it (services/train.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.model_repository import ModelSignature, TensorSpec
from services.common.unet import UNet, mirror_mean, mirrored_batch, resize_bilinear
from services.fusion.model import FOLDS_FULL, FOLDS_ON_WHITE, LIGHTING_SIGMA, fold_share, garment_lightness
from services.warp.gmm import premultiplied, work_size

NAME = "tryon_generator"
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
# What the fused photo it is given is laid over, kept in every try-on checkpoint ("input"), so that
# weights trained on another are refused at install: 1 the geometric warp; 2 the learned warp
# (over the geometric one, the geometric garment showed through wherever the learned outline
# fell short of it).
INPUT = 2

SIGNATURE = ModelSignature(
    NAME,
    inputs=(  # each pooled to gmm.work_size of the photo
        TensorSpec("fused__0", (1, 3, -1, -1), np.float32),  # tryon_fusion's output, RGB in [0, 1]
        TensorSpec("garment__1", (1, 4, -1, -1), np.float32),  # the (learned) warped garment, premultiplied
        TensorSpec("editable__2", (1, 1, -1, -1), np.float32),  # where the photo may change
    ),
    outputs=(TensorSpec("layers__0", (1, LAYERS, -1, -1), np.float32),),  # the light, the mask, the shade
    max_batch_size=0,
    cpu_bf16=True,  # trained under bf16 autocast (services/train.py bf16)
)


def compose(
    fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor, layers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the try-on, the composition mask) from the layers scaled up to the inputs' size; the
    garment is straight RGBA."""
    render = (fused * layers[:, 0:1]).clamp(0.0, 1.0)
    mask = layers[:, 1:2] * garment[:, 3:4]
    shaded = (garment[:, 0:3] * layers[:, 2:3]).clamp(0.0, 1.0)
    tryon = mask * shaded + (1.0 - mask) * render
    return editable * tryon + (1.0 - editable) * fused, mask


class TryonGenerator(nn.Module):
    __constants__ = ("shade_range", "mask_floor", "lighting_sigma", "folds_on_white", "folds_full", "mirror_average")

    def __init__(self) -> None:
        super().__init__()
        # Served with the layers averaged with the mirrored inputs' (services.common.unet.mirror_mean;
        # `fitroom models install` turns it on): box SSIM 0.676 -> 0.680 on the 1,000 validation pairs.
        self.mirror_average = False
        self.shade_range = SHADE_RANGE
        self.mask_floor = MASK_FLOOR
        self.lighting_sigma = LIGHTING_SIGMA
        self.folds_on_white = FOLDS_ON_WHITE
        self.folds_full = FOLDS_FULL
        self.unet = UNet(IN_CHANNELS, LAYERS, WIDTHS)
        with torch.no_grad():  # start as fusion: no light, no shade, the mask half-way above its floor
            self.unet.head.weight.zero_()
            self.unet.head.bias.zero_()

    def forward(self, fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor) -> torch.Tensor:
        """The layers at the inputs' (work) size: the light, the mask before the garment's alpha,
        the shade. `garment` is premultiplied."""
        if self.mirror_average:
            return mirror_mean(self.layers(mirrored_batch(fused), mirrored_batch(garment), mirrored_batch(editable)))
        return self.layers(fused, garment, editable)

    def layers(self, fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor) -> torch.Tensor:
        maps = self.unet(torch.cat([fused, garment, editable], dim=1))
        lightness = garment_lightness(garment, self.lighting_sigma * garment.shape[2])
        share = fold_share(lightness, self.folds_on_white, self.folds_full)
        return torch.cat(
            [
                torch.exp(self.shade_range * torch.tanh(maps[:, 0:1])),
                self.mask_floor + (1.0 - self.mask_floor) * torch.sigmoid(maps[:, 1:2]),
                torch.exp(self.shade_range * share * torch.tanh(maps[:, 2:3])),
            ],
            dim=1,
        )

    def tryon(
        self, fused: torch.Tensor, garment: torch.Tensor, editable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the try-on, the composition mask) of a batch at any size (training): the stage's path
        in torch. `garment` is straight RGBA."""
        size = list(work_size(fused.shape[2], fused.shape[3]))
        inputs = [fused, premultiplied(garment), editable]
        if fused.shape[2] > size[0]:
            inputs = [F.adaptive_avg_pool2d(x, size) for x in inputs]
        layers = self(*inputs)
        if fused.shape[2] > size[0]:
            layers = resize_bilinear(layers, [fused.shape[2], fused.shape[3]])
        return compose(fused, garment, editable, layers)
