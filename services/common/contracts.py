"""Pydantic contracts for what the stages produce and pass on.

JSON-friendly fields travel between processes as they are; large arrays (masks, label maps)
are excluded from the JSON and stored as artifacts next to it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Category = Literal["upper", "lower", "dress"]

# BlazePose's 33 landmarks, in model order.
BLAZEPOSE_LANDMARKS = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
LANDMARK_INDEX = {name: i for i, name in enumerate(BLAZEPOSE_LANDMARKS)}


class Landmark(BaseModel):
    """One body landmark in image pixels. z is depth relative to the hips, in the same
    pixel scale as x (smaller is closer to the camera)."""

    x: float
    y: float
    z: float
    visibility: float = Field(ge=0, le=1, description="probability the point is visible (not occluded)")
    presence: float = Field(ge=0, le=1, description="probability the point is inside the image")


class Box(BaseModel):
    x0: float
    y0: float
    x1: float
    y1: float


class PoseResult(BaseModel):
    """Output of the pose stage for one person photo."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_width: int
    image_height: int
    landmarks: list[Landmark] = Field(min_length=33, max_length=33)
    box: Box = Field(description="the person: the person mask's extent, or the landmarks' when the mask is empty")
    score: float = Field(description="detector confidence")
    # Person mask in image space, float32 in [0, 1], HxW. Stored as its own artifact.
    mask: np.ndarray = Field(exclude=True, repr=False)

    def landmark_array(self) -> np.ndarray:
        """The landmarks as a (33, 5) float32 array: x, y, z, visibility, presence."""
        return np.array([[p.x, p.y, p.z, p.visibility, p.presence] for p in self.landmarks], dtype=np.float32)


# The LIP label set (VITON, VITON-HD and CP-VTON data use it).
LIP_LABELS = (
    "background",
    "hat",
    "hair",
    "glove",
    "sunglasses",
    "upper_clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "torso_skin",
    "scarf",
    "skirt",
    "face",
    "left_arm",
    "right_arm",
    "left_leg",
    "right_leg",
    "left_shoe",
    "right_shoe",
)
LIP = {name: i for i, name in enumerate(LIP_LABELS)}
# The colours LIP label maps are drawn in (JPPNet's palette, as VITON's palette PNGs carry it).
LIP_PALETTE = (
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0), (0, 0, 85), (0, 119, 221),
    (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
    (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
)  # fmt: skip


class ParseResult(BaseModel):
    """Output of the parser stage for one person photo."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_width: int
    image_height: int
    # HxW uint8 LIP label ids at the photo's resolution. Stored as its own artifact (palette PNG).
    labels: np.ndarray = Field(exclude=True, repr=False)
    category: Category | None = None
    # HxW bool: where a garment of `category` may repaint; None when no category was asked for.
    agnostic: np.ndarray | None = Field(default=None, exclude=True, repr=False)
    # The top and the trousers (or skirt) are one colour: where one ends is the parser's prior,
    # not the photo's, so the learned warp is not shown the lower garment (services/warp/gmm.py).
    one_colour_outfit: bool = False


class GarmentAnalysis(BaseModel):
    """Output of garment analysis for one product image (cached under the image's hash)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_width: int
    image_height: int
    category: Category
    # How sure the detection was (0.5 to 1); 1 when the category was given, not detected.
    category_confidence: float = 1.0
    # Named outline points in image pixels (see services/warp/garment.py for names and order);
    # a garment without a part (sleeves, a crotch) has no points for it.
    landmarks: dict[str, tuple[float, float]]
    # HxW bool garment mask at the image's resolution. Stored as its own artifact.
    mask: np.ndarray = Field(exclude=True, repr=False)


class WarpResult(BaseModel):
    """Output of the warp stage: the garment on the person's canvas."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_width: int
    image_height: int
    category: Category
    # HxWx4 float32 RGBA in [0, 1] at the person photo's resolution. Stored as its own artifact.
    rgba: np.ndarray = Field(exclude=True, repr=False)
