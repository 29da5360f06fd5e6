"""The `warp_gmm` model: the learned warp, a residual flow over the geometric warp (CP-VTON's GMM role).

The geometric warp (services/warp/stage.py) lays the flat-lay on the body through landmark
splines; what it cannot know from landmarks (how far a top falls, how a loose garment stands
off the body, where the sleeves' edges sit) is learned here from paired photos. A U-Net looks
at the geometrically warped garment and a cloth-agnostic person representation (the pose as
joint heatmaps, the body silhouette, the arms drawn from the pose, face and hair, and the
garments the new one leaves worn, as VITON-HD's agnostic person keeps the trousers: never the
worn garment's own region, nor the bare skin whose edges are the worn garment's) at
WORK_HEIGHT, and predicts a flow field. The flow is smooth (trained with ACGPN's second-order
term), so it is scaled up to the photo's full resolution and the full-resolution geometric warp
is resampled through it: the garment's pixels keep the flat-lay's own detail.

The served model is the network alone, small in and small out: the garment pooled to the work
size and the person representation in, the flow out. Scaling the flow up and resampling the
photo-sized garment is the stage's (`resample`, with OpenCV, only over the box the garment can
reach); training does the same in torch (`WarpGMM.apply`), and a test holds the two equal.

No default weights: `fitroom train warp` trains it on the user's paired photos
(services/train.py); `fitroom models install` exports it to the model repository.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.contracts import LANDMARK_INDEX, LIP, Category
from services.common.model_repository import ModelSignature, TensorSpec
from services.common.unet import UNet, resize_bilinear
from services.parser.agnostic import left_worn
from services.parser.geometry import ARM_RADIUS, landmark

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
MIRRORED_CHANNELS.append(len(MIRRORED_CHANNELS))  # the garments left worn
HEATMAP_SIGMA = 0.02  # of the work height
VISIBLE = 0.5
# What person_representation draws, versioned: a warp trained on one version sees nonsense in
# another (the first version's arms were the parse's bare arms; the second did not see the
# trousers), so checkpoints carry it and `fitroom models install` refuses a stale one. Bump when
# the representation changes.
REPRESENTATION = 3
# silhouette, arms (from the pose), face and hair, a heatmap per joint, the garments left worn
PERSON_CHANNELS = 3 + len(JOINTS) + 1
IN_CHANNELS = 4 + PERSON_CHANNELS  # the warped garment (premultiplied RGB and alpha) and the person

SIGNATURE = ModelSignature(
    NAME,
    inputs=(
        TensorSpec("garment__0", (1, 4, -1, -1), np.float32),  # the geometric warp, premultiplied, pooled to work_size
        TensorSpec("person__1", (1, PERSON_CHANNELS, -1, -1), np.float32),  # person_representation()
    ),
    outputs=(TensorSpec("flow__0", (1, 2, -1, -1), np.float32),),  # on FLOW_POOL cells, grid_sample units
    max_batch_size=0,
    cpu_bf16=True,  # trained under bf16 autocast (services/train.py bf16)
)


def work_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) the flow is predicted at for a photo of height x width."""
    scale = WORK_HEIGHT / height
    return WORK_HEIGHT, max(8, round(width * scale))


def person_representation(
    labels: np.ndarray, landmarks: np.ndarray, category: Category, one_colour_outfit: bool
) -> np.ndarray:
    """(PERSON_CHANNELS, h, w) float32 at work_size: the cloth-agnostic person the flow looks at.
    `labels` is the parse (LIP) at the photo's size; `landmarks` (33, >=3) holds x, y in photo
    pixels and the visibility in the last column used here (column 2 of (33, 3), 3 of (33, 5)).

    The last channel is what a garment of `category` leaves worn (a top's trousers): the flow
    learns to end a hem where they begin (paired IoU with our parse 0.829 -> 0.847). Not for a
    one-colour outfit (ParseResult.one_colour_outfit): there the parse's top-to-trousers boundary
    is its prior's guess, often at mid-torso, and a hem pulled up to it left a band of the old top
    showing (a white tank over white shorts, twelfth session)."""
    height, width = labels.shape
    h, w = work_size(height, width)
    small = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    silhouette = small != LIP["background"]
    head = (small == LIP["face"]) | (small == LIP["hair"])
    visibility = landmarks[:, 2] if landmarks.shape[1] == 3 else landmarks[:, 3]
    points = landmarks[:, :2] * np.array([w / width, h / height])
    channels = [silhouette, arm_capsules(points, visibility, (h, w)), head]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    sigma = HEATMAP_SIGMA * h
    for joint in JOINTS:
        i = LANDMARK_INDEX[joint]
        if visibility[i] < VISIBLE:
            channels.append(np.zeros((h, w), np.float32))
            continue
        x, y = landmarks[i, 0] * w / width, landmarks[i, 1] * h / height
        channels.append(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma * sigma)))
    channels.append(np.zeros((h, w), np.float32) if one_colour_outfit else left_worn(small, category))
    return np.stack(channels).astype(np.float32)


def arm_capsules(points: np.ndarray, visibility: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxW float32: the arms as capsules along shoulder, elbow and wrist, from the pose alone.
    Not the parse's bare arms: those end where the worn garment's sleeves begin, and from paired
    photos (where the worn garment is the new one) the warp learned to pull any garment's
    sleeves down to them: a tee over a long-sleeved top grew sleeves to the wrists."""
    canvas = np.zeros(shape, np.uint8)
    shoulder_width = float(np.linalg.norm(landmark(points, "left_shoulder") - landmark(points, "right_shoulder")))
    thickness = max(1, round(2 * ARM_RADIUS * shoulder_width))
    for side in ("left", "right"):
        joints = [f"{side}_{j}" for j in ("shoulder", "elbow", "wrist")]
        for a, b in itertools.pairwise(joints):
            if min(visibility[LANDMARK_INDEX[a]], visibility[LANDMARK_INDEX[b]]) < VISIBLE:
                break
            start, end = (np.round(landmark(points, j)).astype(int) for j in (a, b))
            cv2.line(canvas, tuple(start.tolist()), tuple(end.tolist()), 1, thickness)
    return canvas.astype(np.float32)


def premultiplied(rgba: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) straight RGBA -> premultiplied, so that resampling never bleeds the garment's
    colour out of its alpha (or the backdrop's in)."""
    return torch.cat([rgba[:, :3] * rgba[:, 3:4], rgba[:, 3:4]], dim=1)


def straight(premult: torch.Tensor) -> torch.Tensor:
    alpha = premult[:, 3:4]
    return torch.cat([(premult[:, :3] / alpha.clamp_min(1e-6)).clamp(0.0, 1.0), alpha.clamp(0.0, 1.0)], dim=1)


def identity_grid(n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(n, height, width, 2) grid_sample coordinates (align_corners=False) of every pixel."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) * 2.0 + 1.0) / float(height) - 1.0
    xs = (torch.arange(width, dtype=torch.float32, device=device) * 2.0 + 1.0) / float(width) - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(n, height, width, 2)


def pooled(image: np.ndarray, size: tuple[int, int], box: tuple[slice, slice] | None = None) -> np.ndarray:
    """HxW or HxWxC float32 -> (1, C, h, w) at size (h, w), each pixel the mean of its area: what
    adaptive_avg_pool2d gives in training (the same for whole factors). With `box`, the image
    is known to be 0 outside it: where the photo's size is a whole multiple of `size`, only the
    cells over the box are read (a garment covers about a third of a photo)."""
    height, width = image.shape[:2]
    fy, fx = height // size[0], width // size[1]
    if box is None or height != fy * size[0] or width != fx * size[1]:
        small = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small.reshape(size[0], size[1], -1).transpose(2, 0, 1)[None], dtype=np.float32)
    rows = slice(box[0].start // fy, -(-box[0].stop // fy))  # the cells the box touches
    cols = slice(box[1].start // fx, -(-box[1].stop // fx))
    part = image[rows.start * fy : rows.stop * fy, cols.start * fx : cols.stop * fx]
    small = np.zeros((size[0], size[1], *image.shape[2:]), np.float32)
    small[rows, cols] = cv2.resize(part, (cols.stop - cols.start, rows.stop - rows.start), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small.reshape(size[0], size[1], -1).transpose(2, 0, 1)[None])


def alpha_box(alpha: np.ndarray, margin: tuple[int, int] = (0, 0)) -> tuple[slice, slice] | None:
    """The rows and columns where `alpha` (HxW) is above 0, widened by margin (rows, columns)
    within the image; None where it is 0 everywhere. The stages' full-size arithmetic on a
    garment runs inside it: a garment covers about a third of a photo."""
    x, y, w, h = cv2.boundingRect((alpha > 0).view(np.uint8))  # a channel's strided view compares without a copy
    if w == 0:
        return None
    height, width = alpha.shape
    return (
        slice(max(0, y - margin[0]), min(height, y + h + margin[0])),
        slice(max(0, x - margin[1]), min(width, x + w + margin[1])),
    )


# The stages' per-pixel arithmetic on HxWx4 arrays goes through torch views of them: numpy's
# loops over a last axis of 3 or 4 channels are several times slower (7.6 against 0.9 ms to
# premultiply a garment's box at 768x1024).


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """HxWx4 straight RGBA -> premultiplied (numpy, for the stages; `premultiplied` for tensors)."""
    out = np.zeros(rgba.shape, np.float32)
    box = alpha_box(rgba[..., 3])
    if box is not None:
        source, target = torch.from_numpy(rgba[box]), torch.from_numpy(out[box])
        torch.mul(source[..., :3], source[..., 3:4], out=target[..., :3])
        target[..., 3] = source[..., 3]
    return out


def resample(premult: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The photo-sized premultiplied garment (HxWx4) resampled through `flow` (WarpGMM's output,
    (2, h, w) in grid_sample units) scaled up to it, as straight RGBA: WarpGMM.warp for one
    photo, with OpenCV, only inside the box the garment can reach (its alpha's, widened by the
    largest offset)."""
    height, width = premult.shape[:2]
    out = np.zeros(premult.shape, np.float32)
    reach = (int(np.abs(flow[1]).max() * height / 2) + 2, int(np.abs(flow[0]).max() * width / 2) + 2)
    box = alpha_box(premult[..., 3], reach)  # grid units to pixels, and the bilinear neighbour
    if box is None:
        return out
    offsets = cv2.resize(flow.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)[box]
    # grid_sample (align_corners=False) reads pixel x + offset * width / 2 for output pixel x.
    map_x = offsets[..., 0] * (width / 2) + np.arange(box[1].start, box[1].stop, dtype=np.float32)
    map_y = offsets[..., 1] * (height / 2) + np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None]
    moved = cv2.remap(premult, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    torch.from_numpy(out[box]).copy_(straight(torch.from_numpy(moved).permute(2, 0, 1)[None])[0].permute(1, 2, 0))
    return out


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

    def forward(self, garment: torch.Tensor, person: torch.Tensor) -> torch.Tensor:
        """(N, 2, h / FLOW_POOL, w / FLOW_POOL) flow in grid_sample units, for the geometric warp
        `garment` (premultiplied, pooled to the person representation's size).

        Served in one pass, unlike the other learned networks (services.common.unet.mirror_mean):
        averaged with the mirrored inputs' flow it gave paired IoU 0.828 against 0.827 with our
        parse (0.870 against 0.868 with the GT parse) on the 1,000 validation pairs, for 15 ms of
        a learned try-on's 420 at 768x1024 on 2 cores, and the learned path's speed target was
        the nearer one (eleventh session)."""
        flow = torch.tanh(self.unet(torch.cat([garment, person], dim=1))) * self.max_flow
        return F.avg_pool2d(flow, self.flow_pool, ceil_mode=True) if self.flow_pool > 1 else flow

    def apply(self, premult: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """`premult` (premultiplied RGBA at any size) resampled through `flow` scaled up to its
        size, premultiplied: what `resample` does for a photo, for a training batch."""
        n, _, height, width = premult.shape
        offsets = resize_bilinear(flow, [height, width]).permute(0, 2, 3, 1)
        grid = identity_grid(n, height, width, premult.device) + offsets
        return F.grid_sample(premult, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def warp(self, warped: torch.Tensor, person: torch.Tensor) -> torch.Tensor:
        """The learned warp of `warped` (straight RGBA, a batch at any size), straight RGBA."""
        premult = premultiplied(warped)
        flow = self(F.adaptive_avg_pool2d(premult, [person.shape[2], person.shape[3]]), person)
        return straight(self.apply(premult, flow))
