"""Where named landmarks fall along a garment's outline (shared by the tests)."""

from __future__ import annotations

import cv2
import numpy as np


def outline_positions(mask: np.ndarray, landmarks: dict[str, tuple[float, float]], order: tuple[str, ...]) -> list[int]:
    """Positions along the outline (counter-clockwise on screen, starting at the first named
    landmark) of the landmarks in `order` that are present."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    area = np.sum(contour[:, 0] * np.roll(contour[:, 1], -1) - np.roll(contour[:, 0], -1) * contour[:, 1])
    if area > 0:
        contour = contour[::-1]
    names = [n for n in order if n in landmarks]
    index = [int(np.argmin(np.linalg.norm(contour - np.array(landmarks[n]), axis=1))) for n in names]
    return [(i - index[0]) % len(contour) for i in index]
