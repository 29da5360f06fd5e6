"""The pose stage: person photo -> 33 landmarks, person box and person mask.

Two models, as MediaPipe's BlazePose runs them on a still image: the detector on the whole
photo letterboxed to 224x224 finds the person and a rotated ROI around them; the landmark
model on that ROI (256x256) gives the landmarks, a heatmap that refines them, and a
segmentation mask. Everything here is pure array code; models run through `infer`.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.contracts import Box, Landmark, PoseResult
from services.common.errors import NoPersonDetected
from services.common.inference import Infer
from services.common.mediapipe_models import POSE_DETECTION, POSE_LANDMARK
from services.common.roi import Roi, crop, to_image_pixels, warp_to_image
from services.pose import blazepose as bp

MASK_THRESHOLD = 0.5


def detect(image: np.ndarray, infer: Infer) -> tuple[bp.Detection, Roi] | None:
    """Best person detection and the landmark ROI derived from it, or None."""
    height, width = image.shape[:2]
    letterbox = bp.letterbox_roi(width, height)
    pixels = crop(image, letterbox, bp.DETECTOR_SIZE, cv2.BORDER_CONSTANT)
    tensor = pixels.astype(np.float32) * (2.0 / 255.0) - 1.0  # the detector wants [-1, 1]
    out = infer(POSE_DETECTION.name, {POSE_DETECTION.input_name: tensor[None]})
    boxes, scores = (out[name][0] for name in POSE_DETECTION.output_names)
    detections = bp.weighted_nms(bp.decode_detections(boxes, scores))
    if not detections:
        return None
    return detections[0], bp.detection_roi(detections[0], letterbox)


def landmarks_in_roi(image: np.ndarray, roi: Roi, infer: Infer) -> tuple[np.ndarray, float, np.ndarray]:
    """Run the landmark model on the ROI. Returns (39, 5) landmarks in ROI-normalised
    coordinates (x, y, z, visibility, presence), the presence score and the ROI's mask
    logits (256x256)."""
    pixels = crop(image, roi, bp.LANDMARK_SIZE, cv2.BORDER_REPLICATE)
    tensor = pixels.astype(np.float32) * (1.0 / 255.0)
    out = infer(POSE_LANDMARK.name, {POSE_LANDMARK.input_name: tensor[None]})
    raw, presence, segmentation, heatmap, _world = (out[name][0] for name in POSE_LANDMARK.output_names)
    landmarks = raw.reshape(bp.NUM_LANDMARKS, 5).astype(np.float64)
    landmarks[:, :3] /= bp.LANDMARK_SIZE
    landmarks[:, 3:] = bp.sigmoid(landmarks[:, 3:])
    landmarks[:, :2] = bp.refine_from_heatmap(landmarks[:, :2], heatmap)
    return landmarks, float(presence[0]), segmentation[..., 0]


def person_box(mask: np.ndarray, points: np.ndarray, width: int, height: int) -> Box:
    person = mask > MASK_THRESHOLD
    rows, cols = np.flatnonzero(person.any(axis=1)), np.flatnonzero(person.any(axis=0))
    if len(rows):
        return Box(x0=float(cols[0]), y0=float(rows[0]), x1=float(cols[-1] + 1), y1=float(rows[-1] + 1))
    lo = np.clip(points.min(axis=0), 0, [width, height])
    hi = np.clip(points.max(axis=0), 0, [width, height])
    return Box(x0=float(lo[0]), y0=float(lo[1]), x1=float(hi[0]), y1=float(hi[1]))


def run(image: np.ndarray, infer: Infer) -> PoseResult:
    """Pose of the most prominent person in an RGB uint8 image. Raises NoPersonDetected."""
    height, width = image.shape[:2]
    found = detect(image, infer)
    if found is None:
        raise NoPersonDetected("no person found in the image")
    detection, roi = found
    landmarks, presence, mask_logits = landmarks_in_roi(image, roi, infer)
    if presence < bp.MIN_PRESENCE:
        raise NoPersonDetected(f"no person found in the image (pose presence {presence:.2f})")

    points = to_image_pixels(landmarks[:33, :2], roi)
    depth = landmarks[:33, 2] * roi.size  # z shares x's scale, as MediaPipe projects it
    mask = warp_to_image(bp.sigmoid(mask_logits).astype(np.float32), roi, width, height)
    return PoseResult(
        image_width=width,
        image_height=height,
        landmarks=[
            Landmark(x=float(x), y=float(y), z=float(z), visibility=float(v), presence=float(p))
            for (x, y), z, v, p in zip(points, depth, landmarks[:33, 3], landmarks[:33, 4], strict=True)
        ],
        box=person_box(mask, points, width, height),
        score=detection.score,
        mask=mask,
    )
