"""The `warp_gmm` model: the learned warp, a residual flow over the geometric warp (CP-VTON's GMM role).

The geometric warp (services/warp/stage.py) lays the flat-lay on the body through landmark
splines; what it cannot know from landmarks (how far a top falls, how a loose garment stands
off the body, where the sleeves' edges sit) is learned here from paired photos. A U-Net looks
at the geometrically warped garment and a cloth-agnostic person representation (the pose as
joint heatmaps, the body silhouette, bare arms, face and hair: the same things the geometric
warp stands on, never the worn garment's own region) at WORK_HEIGHT, and predicts a flow
field. The flow is smooth (trained with ACGPN's second-order term), so it is scaled up to the
photo's full resolution and the full-resolution geometric warp is resampled through it: the
garment's pixels keep the flat-lay's own detail.

No default weights: `fitroom train warp` trains it on the user's paired photos
(services/train.py); `fitroom models install` exports it to the model repository.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.contracts import LANDMARK_INDEX, LIP
from services.common.model_repository import ModelSignature, TensorSpec
from services.common.unet import UNet, resize_bilinear

NAME = "warp_gmm"
WORK_HEIGHT = 128  # the flow is predicted at this height (the training photos' half)
WIDTHS = (16, 32, 64, 128)
# The flow is averaged over FLOW_POOL x FLOW_POOL cells of the work size before it is scaled up
# (32x24 at 128x96): a correction of the garment's outline and fall, never a per-pixel one. A
# per-pixel flow fits the training photos' silhouettes a little better (paired IoU 0.827
# against 0.822 on 200 validation pairs) and folds a print into waves on unseen photos.
FLOW_POOL = 4
MAX_FLOW = 0.25  # of the half-width or half-height (grid_sample units): the residual stays a correction
JOINTS = (
    "nose",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
)
# person_representation's channels in a mirrored photo: the left and right joints trade places.
_SIDES = {"left": "right", "right": "left"}
MIRRORED_CHANNELS = [0, 1, 2] + [3 + JOINTS.index("_".join(_SIDES.get(w, w) for w in j.split("_"))) for j in JOINTS]
HEATMAP_SIGMA = 0.02  # of the work height
VISIBLE = 0.5
PERSON_CHANNELS = 3 + len(JOINTS)  # silhouette, bare arms, face and hair, a heatmap per joint
IN_CHANNELS = 4 + PERSON_CHANNELS  # the warped garment (premultiplied RGB and alpha) and the person

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("warped__0", (1, 4, -1, -1), np.float32),  # the geometric warp, straight RGBA, full size
        TensorSpec("person__1", (1, PERSON_CHANNELS, -1, -1), np.float32),  # person_representation()
    ),
    outputs=(TensorSpec("warped__0", (1, 4, -1, -1), np.float32),),  # the learned warp, straight RGBA
    max_batch_size=0,
)


def work_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) the flow is predicted at for a photo of height x width."""
    scale = WORK_HEIGHT / height
    return WORK_HEIGHT, max(8, round(width * scale))


def person_representation(labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(PERSON_CHANNELS, h, w) float32 at work_size: the cloth-agnostic person the flow looks at.
    `labels` is the parse (LIP) at the photo's size; `landmarks` (33, >=3) holds x, y in photo
    pixels and the visibility in the last column used here (column 2 of (33, 3), 3 of (33, 5))."""
    height, width = labels.shape
    h, w = work_size(height, width)
    small = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    silhouette = small != LIP["background"]
    arms = (small == LIP["left_arm"]) | (small == LIP["right_arm"])
    head = (small == LIP["face"]) | (small == LIP["hair"])
    channels = [silhouette, arms, head]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    sigma = HEATMAP_SIGMA * h
    visibility = landmarks[:, 2] if landmarks.shape[1] == 3 else landmarks[:, 3]
    for joint in JOINTS:
        i = LANDMARK_INDEX[joint]
        if visibility[i] < VISIBLE:
            channels.append(np.zeros((h, w), np.float32))
            continue
        x, y = landmarks[i, 0] * w / width, landmarks[i, 1] * h / height
        channels.append(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma * sigma)))
    return np.stack(channels).astype(np.float32)


def premultiplied(rgba: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) straight RGBA -> premultiplied, so that resampling never bleeds the garment's
    colour out of its alpha (or the backdrop's in)."""
    return torch.cat([rgba[:, :3] * rgba[:, 3:4], rgba[:, 3:4]], dim=1)


def straight(premult: torch.Tensor) -> torch.Tensor:
    alpha = premult[:, 3:4]
    return torch.cat([(premult[:, :3] / alpha.clamp_min(1e-6)).clamp(0.0, 1.0), alpha.clamp(0.0, 1.0)], dim=1)


def identity_grid(
    n: int, height: int, width: int, rows: tuple[int, int], cols: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(n, rows, cols, 2) grid_sample coordinates (align_corners=False) of the pixels in
    [rows[0], rows[1]) x [cols[0], cols[1]) of a height x width image."""
    ys = (torch.arange(rows[0], rows[1], dtype=torch.float32, device=device) * 2.0 + 1.0) / float(height) - 1.0
    xs = (torch.arange(cols[0], cols[1], dtype=torch.float32, device=device) * 2.0 + 1.0) / float(width) - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(n, rows[1] - rows[0], cols[1] - cols[0], 2)


class WarpGMM(nn.Module):
    __constants__ = ("max_flow", "flow_pool")

    def __init__(self) -> None:
        super().__init__()
        self.max_flow = MAX_FLOW
        self.flow_pool = FLOW_POOL
        self.unet = UNet(IN_CHANNELS, 2, WIDTHS)
        with torch.no_grad():  # start as the identity: the geometric warp itself
            self.unet.head.weight.zero_()
            self.unet.head.bias.zero_()

    def flow(self, premult: torch.Tensor, person: torch.Tensor) -> torch.Tensor:
        """(N, 2, h, w) flow at the person representation's size, in grid_sample units, for the
        geometric warp `premult` (premultiplied RGBA at any size)."""
        small = F.adaptive_avg_pool2d(premult, [person.shape[2], person.shape[3]])
        return torch.tanh(self.unet(torch.cat([small, person], dim=1))) * self.max_flow

    def apply(self, premult: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """`premult` (premultiplied RGBA at any size) resampled through `flow` scaled up to its
        size, premultiplied. For one photo only the rows and columns the garment can reach are
        sampled (its alpha's box, widened by the largest offset): at a photo's full size the
        garment covers about a third of it, and outside that box every sample is transparent
        anyway. A training batch is sampled whole: its garments' boxes together cover most of
        it, and finding them would stall a GPU every step."""
        n, _, height, width = premult.shape
        if self.flow_pool > 1:
            flow = F.avg_pool2d(flow, self.flow_pool, ceil_mode=True)
        if n > 1:
            offsets = resize_bilinear(flow, [height, width]).permute(0, 2, 3, 1)
            grid = identity_grid(n, height, width, (0, height), (0, width), premult.device) + offsets
            return F.grid_sample(premult, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        covered = premult[:, 3] > 0
        rows = torch.nonzero(covered.any(0).any(1))
        cols = torch.nonzero(covered.any(0).any(0))
        if rows.shape[0] == 0:
            return torch.zeros_like(premult)
        reach_y = int(flow[:, 1].abs().max() * height / 2) + 2  # grid units to pixels, and the bilinear neighbour
        reach_x = int(flow[:, 0].abs().max() * width / 2) + 2
        top, bottom = max(0, int(rows[0, 0]) - reach_y), min(height, int(rows[-1, 0]) + 1 + reach_y)
        left, right = max(0, int(cols[0, 0]) - reach_x), min(width, int(cols[-1, 0]) + 1 + reach_x)
        offsets = resize_bilinear(flow, [height, width])[:, :, top:bottom, left:right].permute(0, 2, 3, 1)
        grid = identity_grid(n, height, width, (top, bottom), (left, right), premult.device) + offsets
        moved = F.grid_sample(premult, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.pad(moved, [left, width - right, top, height - bottom])

    def forward(self, warped: torch.Tensor, person: torch.Tensor) -> torch.Tensor:
        """The learned warp of `warped` (straight RGBA, any size), straight RGBA."""
        premult = premultiplied(warped)
        return straight(self.apply(premult, self.flow(premult, person)))
