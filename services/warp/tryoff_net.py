"""The `tryoff_generator` model: the learned try-off (the seed "clothes-extractor"), a residual over
the default, geometric try-off (services/warp/tryoff.py).

The seed turned an on-model photo and the worn garment's mask into a frontal product image with
a U-Net (PatchGAN, L1, SSIM and perceptual losses). Here the U-Net does not have to learn the
geometry from scratch: the default try-off has already laid the garment flat, so the network
starts from it and learns what it gets wrong (the outline where the parse is wrong or the arms
hid it, the sleeves' length, the photo's shading on an evenly lit product shot). At the
training size (services.train.TRAIN_SIZE, 192x256) it looks at

- the person photo fitted into the training size, and the worn garment's region in our parse
  (the seed's inputs, in the photo's frame);
- the default try-off's flat-lay on white and its mask, `aligned` (its mask's box fitted into
  the scoring canvas, tryoff.CANVAS less tryoff.MARGIN): the frame the answer is drawn in;

and predicts the flat-lay's RGB and its alpha on that canvas. The RGB is a residual over the
default's colours. The alpha is a residual over a shape prior (`ShapePrior`, NET_VERSION 2): a
global read of the same inputs that picks among SHAPES learned outlines of flat-lays and mixes
them. Which outline a garment takes laid flat (long sleeves or short, a boxy or a fitted body,
how long) is a decision about the whole garment; the U-Net alone, correcting the default's
outline pixel by pixel, kept the default's sleeves (the first version: 0.796 mask IoU against
the prior's 0.84 on its own, held out). With its last layer at zero it gives the default's
colours inside the prior's outline, and the garment's mean colour where the prior lays what the
default did not (`filled`).

The served model is the network alone (small in, small out); `learned_tryoff` prepares its
inputs from a photo's pose and parse (scaled to the training size, where the default try-off
runs for it: about a tenth of its full-size cost) and scales the answer up onto the canvas the
default path writes (the photo's size, into its largest 3:4 box). No default weights:
`fitroom train tryoff` trains it (services/train.py), `fitroom models install` exports it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.contracts import Box, Category, Landmark, ParseResult, PoseResult
from services.common.errors import GarmentNotDetected, ModelUnavailable
from services.common.inference import Infer
from services.common.model_repository import ModelSignature, TensorSpec
from services.common.unet import UNet, mirror_mean, mirrored_batch, resize_bilinear
from services.parser.agnostic import any_of
from services.warp import tryoff

NAME = "tryoff_generator"
SIZE = (192, 256)  # width, height: services.train.TRAIN_SIZE (a test holds them equal)
WIDTHS = (16, 32, 64, 128, 160)  # five levels: the answer may lie a quarter of the canvas from the photo's garment
IN_CHANNELS = 3 + 1 + 3 + 1  # photo, worn region (photo frame); default flat-lay on white, its mask (canvas)
OUTPUTS = 4  # RGB, alpha
START_LOGIT = 4.0  # alpha's logit where the shape prior is 1 (+) or 0 (-), before the U-Net's residual
# 1: the U-Net's alpha a residual over the default's mask; 2: over the shape prior (training
# resumes a version 1 checkpoint with the prior trained first, services/train.py)
NET_VERSION = 2
SHAPES = 32  # outlines the shape prior mixes (k-means of training flat-lays' masks to start)
SHAPE_SIZE = (48, 64)  # width, height of each outline: a quarter of the canvas (they are smooth)
SHAPE_WIDTHS = (32, 64, 96, 128, 192)  # the prior's encoder, at half the canvas, stride 2 per level

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("photo__0", (1, 3, SIZE[1], SIZE[0]), np.float32),  # the photo fitted into SIZE, RGB in [0, 1]
        TensorSpec("worn__1", (1, 1, SIZE[1], SIZE[0]), np.float32),  # the worn garment's region in our parse
        TensorSpec("default__2", (1, 4, SIZE[1], SIZE[0]), np.float32),  # the default's flat-lay on white + mask
    ),
    outputs=(TensorSpec("flatlay__0", (1, OUTPUTS, SIZE[1], SIZE[0]), np.float32),),  # straight RGBA in [0, 1]
    max_batch_size=0,
    cpu_bf16=True,  # trained under bf16 autocast (services/train.py bf16)
)


class ShapePrior(nn.Module):
    """The flat-lay's outline as a probability on the canvas: an encoder over the inputs at half
    size, pooled over the whole image, gives a softmax over SHAPES outlines (learned, at
    SHAPE_SIZE), and the prior is their mix. Trained first on its own (services/train.py
    `train_shape_prior`: it needs many more samples than the U-Net can see on a CPU, and at
    this size they are cheap), then with the rest."""

    __constants__ = ("height", "width")

    def __init__(self, inputs: int = IN_CHANNELS) -> None:
        super().__init__()
        self.width, self.height = SHAPE_SIZE
        layers: list[nn.Module] = []
        for a, b in zip((inputs, *SHAPE_WIDTHS[:-1]), SHAPE_WIDTHS, strict=True):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
            layers += [nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
        self.encoder = nn.Sequential(*layers)
        self.choice = nn.Linear(SHAPE_WIDTHS[-1], SHAPES)
        self.outlines = nn.Parameter(torch.zeros(SHAPES, SHAPE_SIZE[1] * SHAPE_SIZE[0]))  # logits

    def small(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, SHAPE_SIZE) from the inputs at half the canvas: the mix of outlines."""
        weights = torch.softmax(self.choice(self.encoder(x).mean((2, 3))), dim=1)
        return (weights @ torch.sigmoid(self.outlines)).view(x.shape[0], 1, self.height, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1] from the inputs (N, IN_CHANNELS, H, W) on the canvas."""
        return resize_bilinear(self.small(F.avg_pool2d(x, 2)), [x.shape[2], x.shape[3]])


class TryoffGenerator(nn.Module):
    __constants__ = ("start_logit", "mirror_average")

    def __init__(self) -> None:
        super().__init__()
        self.start_logit = START_LOGIT
        # Served with the flat-lay averaged with the mirrored inputs' (services.common.unet.mirror_mean;
        # `fitroom models install` turns it on): on 200 pairs, most of them training-split ids, the
        # figures moved under 0.001 (median IoU 0.818 -> 0.821).
        self.mirror_average = False
        self.shape = ShapePrior()
        self.unet = UNet(IN_CHANNELS + 1, OUTPUTS, WIDTHS)  # the inputs and the shape prior
        with torch.no_grad():  # start as the default's colours in the prior's outline
            self.unet.head.weight.zero_()
            self.unet.head.bias.zero_()

    def logits(
        self, photo: torch.Tensor, worn: torch.Tensor, default: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, 4, H, W): the RGB in [0, 1] and alpha's logit (training's BCE takes the logit);
        (N, 1, H, W): the shape prior, which training also scores on its own)."""
        x = torch.cat([photo, worn, default], dim=1)
        prior = self.shape(x)
        maps = self.unet(torch.cat([x, prior], dim=1))
        rgb = (filled(default) + torch.tanh(maps[:, 0:3])).clamp(0.0, 1.0)
        alpha = maps[:, 3:4] + self.start_logit * (2.0 * prior - 1.0)
        return torch.cat([rgb, alpha], dim=1), prior

    def forward(self, photo: torch.Tensor, worn: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
        """(N, 4, H, W) straight RGBA in [0, 1] on the scoring canvas."""
        if self.mirror_average:
            return mirror_mean(self.rgba(mirrored_batch(photo), mirrored_batch(worn), mirrored_batch(default)))
        return self.rgba(photo, worn, default)

    def rgba(self, photo: torch.Tensor, worn: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
        out, _ = self.logits(photo, worn, default)
        return torch.cat([out[:, 0:3], torch.sigmoid(out[:, 3:4])], dim=1)


def filled(default: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): the default's flat-lay (N, 4, H, W: RGB on white, mask) with the garment's
    mean colour outside its mask, the colours the U-Net's residual starts from: where the shape
    prior lays a sleeve the default did not, it starts from the garment's colour, not white."""
    mask = default[:, 3:4]
    mean = (default[:, 0:3] * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1.0)
    return default[:, 0:3] * mask + mean * (1.0 - mask)


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) straight RGBA -> (N, 3, H, W) composited on white."""
    alpha = rgba[:, 3:4]
    return rgba[:, 0:3] * alpha + (1.0 - alpha)


# --------------------------------------------------------------------------- inputs


def fit_geometry(width: int, height: int, size: tuple[int, int] = SIZE) -> tuple[float, int, int, int, int]:
    """(scale, new width, new height, left, top): how services.train.fit_to fits a photo of
    width x height into `size` (scaled with its aspect kept, centred, the rest padded)."""
    scale = min(size[0] / width, size[1] / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, new_w, new_h, (size[0] - new_w) // 2, (size[1] - new_h) // 2


def at_training_size(
    image: np.ndarray, pose: PoseResult, parse: ParseResult, size: tuple[int, int] = SIZE
) -> tuple[np.ndarray, PoseResult, ParseResult]:
    """The photo, its pose and its parse fitted into `size` as training's cache holds them (the
    photo by services.train.fit_to; the labels scaled by nearest neighbour, padded with
    background; the landmarks moved with them)."""
    import cv2

    from services.train import fit_to

    height, width = image.shape[:2]
    scale, new_w, new_h, left, top = fit_geometry(width, height, size)
    small = fit_to(image, size)
    labels = cv2.resize(parse.labels, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    labels = cv2.copyMakeBorder(
        labels, top, size[1] - new_h - top, left, size[0] - new_w - left, cv2.BORDER_CONSTANT, value=0
    )
    landmarks = pose.landmark_array()
    return (
        small,
        pose_from_landmarks(
            np.column_stack([landmarks[:, 0] * scale + left, landmarks[:, 1] * scale + top, landmarks[:, 3]]), size
        ),
        ParseResult(image_width=size[0], image_height=size[1], labels=labels),
    )


def pose_from_landmarks(landmarks: np.ndarray, size: tuple[int, int]) -> PoseResult:
    """A PoseResult from (33, 3) x, y, visibility (training's cache keeps these): what the default
    try-off reads of a pose (the points; the mask, depth and presence it does not use)."""
    points = [Landmark(x=float(x), y=float(y), z=0.0, visibility=float(v), presence=1.0) for x, y, v in landmarks]
    xs, ys = landmarks[:, 0], landmarks[:, 1]
    return PoseResult(
        image_width=size[0],
        image_height=size[1],
        landmarks=points,
        box=Box(x0=float(xs.min()), y0=float(ys.min()), x1=float(xs.max()), y1=float(ys.max())),
        score=1.0,
        mask=np.zeros((size[1], size[0]), np.float32),
    )


def default_aligned(
    image: np.ndarray, pose: PoseResult, parse: ParseResult, category: Category
) -> tuple[np.ndarray, tryoff.Tryoff]:
    """(HxWx4 uint8: the default try-off's flat-lay on white and its mask (0 or 255) on the scoring
    canvas, the default's result). GarmentNotDetected as the default."""
    result = tryoff.default_tryoff(image, pose, parse, category)
    rgb, mask = tryoff.aligned(result.rgba[..., :3], result.rgba[..., 3] > 0)
    return np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)]), result


def inputs(photo: np.ndarray, labels: np.ndarray, default: np.ndarray, category: Category) -> dict[str, np.ndarray]:
    """The served model's inputs from the training-size photo (HxWx3 uint8), its parse's labels
    and the `default_aligned` flat-lay (HxWx4 uint8)."""
    worn = any_of(labels, tryoff.GARMENT_LABELS[category]).astype(np.float32)
    as_nchw = lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0  # noqa: E731
    return {"photo__0": as_nchw(photo), "worn__1": worn[None, None], "default__2": as_nchw(default)}


# --------------------------------------------------------------------------- serving


def learned_tryoff(
    image: np.ndarray, pose: PoseResult, parse: ParseResult, category: Category, infer: Infer, weights: str
) -> tryoff.Tryoff:
    """The learned try-off with the weights installed as `weights`: the network at the training
    size, its flat-lay scaled into the largest 3:4 box of a canvas of the photo's size (where the
    default lays its own). ModelUnavailable (with the command that installs them) when they are
    not installed; GarmentNotDetected as the default."""
    import cv2

    from services import learned

    if not tryoff.wears(parse, category):
        raise GarmentNotDetected(f"the person wears no {category} garment that the parse can see")
    small, small_pose, small_parse = at_training_size(image, pose, parse)
    default, result = default_aligned(small, small_pose, small_parse, category)
    try:
        served = inputs(small, small_parse.labels, default, category)
        flatlay = infer(learned.tryoff_model(weights), served)["flatlay__0"][0]
    except ModelUnavailable as exc:
        raise learned.unavailable(exc, weights, setting="FITROOM_LEARNED_TRYOFF") from exc
    flatlay = flatlay.transpose(1, 2, 0)
    height, width = image.shape[:2]
    x0, y0, box_w, box_h = tryoff.layout_box((width, height))
    left, top = round(x0), round(y0)
    size = (max(1, round(box_w)), max(1, round(box_h)))
    big = cv2.resize(flatlay, size, interpolation=cv2.INTER_LINEAR if size[0] > SIZE[0] else cv2.INTER_AREA)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = 255
    alpha = np.clip(big[..., 3], 0.0, 1.0)
    alpha = np.where(alpha < 1.0 / 255, 0.0, alpha)  # no faint veil over the canvas
    rgb = np.where(alpha[..., None] > 0, np.clip(big[..., :3], 0.0, 1.0) * 255.0, 255.0)
    region = (slice(top, top + size[1]), slice(left, left + size[0]))
    rgba[region] = np.dstack([rgb, alpha * 255.0]).round().astype(np.uint8)[: height - top, : width - left]
    if not rgba[..., 3].any():
        raise GarmentNotDetected(f"the learned try-off laid no {category} garment flat from this photo")
    return tryoff.Tryoff(rgba=rgba, category=category, sleeves=result.sleeves, hidden_share=result.hidden_share)
