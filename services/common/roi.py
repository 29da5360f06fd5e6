"""Rotated square regions of interest: the crop a model sees, and the way back to the photo.

MediaPipe's models all run on a rotated square crop of the photo (ImageToTensorCalculator);
these helpers make that crop and map points and masks back to image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Roi:
    """A rotated square region in image pixels."""

    cx: float
    cy: float
    size: float
    rotation: float  # radians, clockwise on screen (y points down)

    def to_image(self) -> np.ndarray:
        """2x3 affine map from ROI-normalised coordinates ([0, 1]^2) to image pixels."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        rot = np.array([[c, -s], [s, c]]) * self.size
        offset = np.array([self.cx, self.cy]) - rot @ np.array([0.5, 0.5])
        return np.hstack([rot, offset[:, None]])


def crop(image: np.ndarray, roi: Roi, size: int, border: int) -> np.ndarray:
    """Resample the ROI to a size x size image (bilinear), as ImageToTensorCalculator does."""
    to_image = roi.to_image() @ np.diag([1.0 / size, 1.0 / size, 1.0])
    return cv2.warpAffine(
        image, to_image, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0
    )


def to_image_pixels(points: np.ndarray, roi: Roi) -> np.ndarray:
    """(N, 2) ROI-normalised points to image pixels."""
    affine = roi.to_image()
    return points @ affine[:, :2].T + affine[:, 2]


def warp_to_image(roi_mask: np.ndarray, roi: Roi, width: int, height: int) -> np.ndarray:
    """Warp a mask predicted on the ROI crop back into the image; outside the ROI is 0."""
    size = roi_mask.shape[0]
    to_image = roi.to_image() @ np.diag([1.0 / size, 1.0 / size, 1.0])
    return cv2.warpAffine(
        roi_mask, to_image, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
