"""The `tryon_fusion` model: composites the warped garment into the person photo.

No weights: every step is a fixed image operation, written in torch so that in production it
runs on Triton's GPU beside the other models (the region maps are decided on the CPU by
services/fusion/stage.py; this model does the per-pixel work).

1. Fill: what the new garment leaves uncovered of the repaint region becomes the lower garment
   below the waist (a shorter top shows the trousers or skirt it was covering), skin elsewhere
   inside the body, and background outside it. All three are push-pull interpolations (a
   masked image pyramid averaged down, then filled back up) of the photo's own known lower
   garment, skin and background pixels, so the fill has their colours and the backdrop's
   gradient. Painted skin is rounded: darker (by up to EDGE_SHADE) towards where it meets
   neither painted nor the photo's own skin, as a limb turns from the light.
2. Lighting: the old garment's luminance over its dye's (the `shading_albedo` map: a red
   top's white stripes are not highlights), blurred with a Gaussian of `lighting_sigma` pixels
   (at least 2% of the image height: its print and edges are gone) and divided by its mean,
   is the shading the new garment is multiplied by (folds, side light, shadows under the arms).
   A dark old garment lends proportionally less of it: its luminance is sheen and noise over a
   tiny mean (black satin would print grey blotches on a white tee). The shading is two parts:
   the broad light (blurred BROAD_LIGHT times more: side light, the shadow under the arms) and
   the folds (the rest). A light new garment takes the broad light whole but only a share of the
   old garment's folds, falling to FOLDS_ON_WHITE on white: they are not its folds, and on white
   a fold's few tenths of darkening read as blotches of crumpled foil.
3. Blend: the repaint region is feathered by a pixel or two, and the garment goes over it with
   its own soft alpha: no hard cut-out edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.model_repository import ModelSignature, TensorSpec, install_model
from services.common.unet import resize_bilinear
from services.warp.gmm import premultiplied

NAME = "tryon_fusion"
VERSION = 14  # bump when the module changes, so that installed copies are rebuilt
REGIONS = (
    "repaint",
    "body",
    "lower_body",
    "skin_source",
    "background_source",
    "lower_source",
    "shading_source",
    "garment_allowed",
    "shading_albedo",
)
SHADING_RANGE = (0.45, 1.6)  # the shading multiplier is clamped: a dark print is not a shadow
SUPPORT_FULL = 0.5  # blurred share of the source at which its shading is trusted fully
MAX_LIGHT = 4.0  # luminance over albedo is clamped here: a misassigned dye's edge is no lamp
DARK_FULL = 0.25  # mean luma (0 to 1) under which a source's shading is trusted proportionally less
FILL_SCALE = 4  # the skin, background and lower-garment fills are interpolated at this fraction of the resolution
FEATHER = 2  # half-width in pixels of the box filter that softens the repaint region's edge
BROAD_LIGHT = 4.0  # the broad light's blur, in lighting sigmas
FOLDS_ON_WHITE = 0.2  # share of the old garment's folds a white garment takes; 1 up to FOLDS_FULL
FOLDS_FULL = 0.3  # luma (0 to 1) of the new garment up to which it takes the folds whole
LIGHTING_SIGMA = 0.02  # of the image height: the old garment's light is blurred at least this much
RELIEF_SIGMA = 0.5  # of the lighting sigma: the blur that finds the edges of the painted skin
EDGE_SHADE = 0.3  # painted skin is this much darker where it meets no skin: 15% at its very edge

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("image__0", (1, 3, -1, -1), np.float32),  # the person photo, RGB in [0, 1]
        TensorSpec("garment__1", (1, 4, -1, -1), np.float32),  # warped garment, straight RGBA
        TensorSpec("regions__2", (1, len(REGIONS), -1, -1), np.float32),  # see REGIONS, in [0, 1]
        TensorSpec("lighting_sigma__3", (1, 1), np.float32),  # in pixels of the photo
    ),
    outputs=(TensorSpec("tryon__0", (1, 3, -1, -1), np.float32),),
    max_batch_size=0,
)


def _push_pull(image: torch.Tensor, known: torch.Tensor, start: int) -> torch.Tensor:
    """Fill the unknown pixels of each `image` (N, C, H, W) smoothly from its `known` ones
    (N, 1, H, W): average down a pyramid counting only known pixels, then fill each level's gaps
    from the coarser level on the way up. The pyramid starts `start` times smaller than the
    image and its result is brought back up bilinearly: the fill is only used where nothing is
    known, where it is smooth anyway."""
    values, weights = [F.avg_pool2d(image * known, start, ceil_mode=True)], [F.avg_pool2d(known, start, ceil_mode=True)]
    while min(values[-1].shape[-2:]) > 1:
        values.append(F.avg_pool2d(values[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    # The coarsest level: the known pixels' mean, or mid-grey where there are none.
    coarsest = weights[-1].sum(dim=(2, 3), keepdim=True)
    mean = values[-1].sum(dim=(2, 3), keepdim=True) / coarsest.clamp_min(1e-6)
    filled = torch.where(coarsest > 0, mean, torch.full_like(mean, 0.5)).expand_as(values[-1])
    for level in range(len(values) - 1, -1, -1):
        coarse = resize_bilinear(filled, list(values[level].shape[-2:]))
        w = weights[level]
        trust = (w * 4.0).clamp(0.0, 1.0)  # a quarter of a cell known is enough to trust it
        filled = trust * (values[level] / w.clamp_min(1e-6)) + (1.0 - trust) * coarse
    return resize_bilinear(filled, list(image.shape[-2:]))


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) Rec. 601 luma of the first three channels of (N, C, H, W) `rgb`."""
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def garment_lightness(premultiplied: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 1, H, W): the garment's dye lightness (luma, 0 to 1) around each pixel, from its
    premultiplied RGBA blurred by `sigma` pixels over the garment only: blurred with the empty
    canvas around it, a white garment's edges would read dark."""
    blurred = gaussian_blur(torch.cat([luminance(premultiplied), premultiplied[:, 3:4]], dim=1), sigma)
    return blurred[:, 0:1] / blurred[:, 1:2].clamp_min(1e-3)


def fold_share(lightness: torch.Tensor, folds_on_white: float, folds_full: float) -> torch.Tensor:
    """The share of a light's folds a garment of `lightness` takes: all of them up to `folds_full`,
    falling to `folds_on_white` on white, where a fold's few tenths of darkening read as blotches
    of crumpled foil."""
    return 1.0 - (1.0 - folds_on_white) * ((lightness - folds_full) / (1.0 - folds_full)).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (1, C, H, W) `x`: on a copy shrunk until sigma is ~2 pixels, then
    brought back bilinearly. A low-pass result loses nothing by the round trip."""
    height, width = x.shape[-2:]
    factor = max(1, int(sigma / 2.0))
    small = F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x
    s = max(sigma / factor, 0.5)
    radius = int(3.0 * s) + 1
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2.0 * s * s))
    kernel = kernel / kernel.sum()
    channels = small.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    small = F.pad(small, (radius, radius, 0, 0), mode="replicate")
    small = F.conv2d(small, horizontal, groups=channels)
    small = F.pad(small, (0, 0, radius, radius), mode="replicate")
    small = F.conv2d(small, vertical, groups=channels)
    return resize_bilinear(small, [height, width]) if factor > 1 else small


class TryonFusion(nn.Module):
    __constants__ = (
        "feather",
        "low",
        "high",
        "fill_scale",
        "support_full",
        "dark_full",
        "max_light",
        "broad_light",
        "folds_on_white",
        "folds_full",
        "relief_sigma",
        "edge_shade",
    )

    def __init__(self) -> None:
        super().__init__()
        self.feather = FEATHER
        self.fill_scale = FILL_SCALE
        self.low, self.high = SHADING_RANGE
        self.support_full = SUPPORT_FULL
        self.dark_full = DARK_FULL
        self.max_light = MAX_LIGHT
        self.broad_light = BROAD_LIGHT
        self.folds_on_white = FOLDS_ON_WHITE
        self.folds_full = FOLDS_FULL
        self.relief_sigma = RELIEF_SIGMA
        self.edge_shade = EDGE_SHADE

    def _relative_shading(
        self, luma: torch.Tensor, albedo: torch.Tensor, mask: torch.Tensor, sigma: float
    ) -> torch.Tensor:
        """The blurred light of the `mask`ed pixels (luminance over `albedo`, each pixel's dye)
        over its mean, clamped. Where little of the mask is near (its blurred weight under
        SUPPORT_FULL: an edge, a stray island such as a button parsed as garment) the ratio fades
        to 1, so no lone pixel sets the light."""
        light = (luma / albedo.clamp_min(1e-3)).clamp(0.0, self.max_light)
        support = gaussian_blur(torch.cat([light * mask, mask], dim=1), sigma)
        total = float(mask.sum())
        mean = float((light * mask).sum()) / total if total > 0 else 1.0
        weight = support[:, 1:2]
        ratio = support[:, 0:1] / (weight * mean).clamp_min(1e-6)
        trust = (weight / self.support_full).clamp(0.0, 1.0) ** 2  # squared: islands fade fast
        # A dark garment's luminance is mostly sheen and noise over a tiny mean: its ratios are
        # not the light, so they count less the darker it is.
        mean_luminance = float((luma * mask).sum()) / total if total > 0 else 1.0
        trust = trust * min(1.0, mean_luminance / self.dark_full)
        return (1.0 + trust * (ratio - 1.0)).clamp(self.low, self.high)

    def forward(
        self, image: torch.Tensor, garment: torch.Tensor, regions: torch.Tensor, lighting_sigma: torch.Tensor
    ) -> torch.Tensor:
        repaint, body, lower_body = regions[:, 0:1], regions[:, 1:2], regions[:, 2:3]
        skin_source, background_source, lower_source = regions[:, 3:4], regions[:, 4:5], regions[:, 5:6]
        shading_source, allowed, albedo = regions[:, 6:7], regions[:, 7:8], regions[:, 8:9]

        # Lighting: the old garment's blurred light (luminance over its dye's) relative to its mean,
        # as broad light times folds; a light new garment takes fewer of the folds.
        sigma = float(lighting_sigma[0, 0])
        image_luma = luminance(image)
        shading = self._relative_shading(image_luma, albedo, shading_source, sigma)
        broad = self._relative_shading(image_luma, albedo, shading_source, self.broad_light * sigma)
        alpha = garment[:, 3:4] * allowed
        # The dye's lightness, not its print's edges.
        lightness = garment_lightness(premultiplied(garment), sigma)
        share = fold_share(lightness, self.folds_on_white, self.folds_full)
        shading = (broad * (shading / broad) ** share).clamp(self.low, self.high)
        # The product shot's own light (a flat-lay's creases, a studio gradient) is taken out
        # the same way, so that the garment carries the person photo's light, not both.
        own_shading = self._relative_shading(luminance(garment), torch.full_like(alpha, 1.0), alpha, sigma)

        # Fill: the lower garment below the waist, skin elsewhere inside the body, background outside it.
        sources = torch.cat([skin_source, background_source, lower_source])
        fills = _push_pull(torch.cat([image, image, image]), sources, self.fill_scale)
        skin, background, lower = fills[0:1], fills[1:2], fills[2:3]
        # Painted skin is rounded: darker towards where it meets no skin (the backdrop beside an
        # arm where a wider old sleeve was), as a limb turns away from the light; one flat tone
        # read as a cut-out plank. The photo's own skin beside it is no edge, and neither is the
        # new garment over it: counted as one, it cost paired photos 0.004 of box SSIM, their
        # thin slivers of skin beside the garment's edge coming out dark.
        painted_skin = body * repaint
        relief = gaussian_blur((painted_skin + skin_source).clamp(0.0, 1.0), self.relief_sigma * sigma)
        rounded = 1.0 - self.edge_shade * (1.0 - relief.clamp(0.0, 1.0))
        fill = body * (skin * shading * rounded).clamp(0.0, 1.0) + (1.0 - body) * background
        fill = lower_body * lower + (1.0 - lower_body) * fill

        size = 2 * self.feather + 1
        soft_repaint = F.avg_pool2d(repaint, size, stride=1, padding=self.feather, count_include_pad=False)
        base = soft_repaint * fill + (1.0 - soft_repaint) * image
        shaded = (garment[:, 0:3] * shading / own_shading).clamp(0.0, 1.0)
        return alpha * shaded + (1.0 - alpha) * base


def export(path: Path) -> None:
    scripted = torch.jit.script(TryonFusion().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))


def build(repository: Path, force: bool = False) -> bool:
    """Install tryon_fusion into the repository; False when the installed copy is current."""
    source = {"module": "services.fusion.model.TryonFusion", "version": VERSION}
    return install_model(repository, SIGNATURE, source, export, force)
