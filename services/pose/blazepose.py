"""BlazePose post-processing, as MediaPipe's pose graphs do it (pure numpy, no models).

Detector side: SSD anchors, box and keypoint decoding, weighted non-max suppression, and the
rotated region of interest (ROI) built from the detector's two alignment keypoints.
Landmark side: the affine crop of the ROI, heatmap refinement, and projection back to image
pixels. The constants are those of mediapipe/modules/pose_detection and pose_landmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.roi import Roi, to_image_pixels

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_LANDMARKS = 39  # 33 body landmarks + 6 auxiliary ones (ROI tracking), in the model output

# SsdAnchorsCalculator options of pose_detection_cpu.pbtxt.
ANCHOR_STRIDES = (8, 16, 32, 32, 32)
# TensorsToDetectionsCalculator options.
BOX_SCALE = 224.0
NUM_KEYPOINTS = 4
SCORE_CLIP = 100.0
MIN_DETECTION_SCORE = 0.5
# NonMaxSuppressionCalculator (WEIGHTED, IoU).
NMS_IOU_THRESHOLD = 0.3
# AlignmentPointsRectsCalculator + RectTransformationCalculator of pose_detection_to_roi.
ROI_TARGET_ANGLE = math.pi / 2
ROI_SCALE = 1.25
# pose_landmark_by_roi post-processing.
MIN_PRESENCE = 0.5
HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def ssd_anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = ANCHOR_STRIDES) -> np.ndarray:
    """Anchor centres, (N, 2) normalised. Layers that share a stride share one grid, each
    layer adding two anchors per cell (aspect ratio 1 and the interpolated scale); with
    fixed_anchor_size every anchor is 1x1, so only the centres matter."""
    centres = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        grid = math.ceil(size / strides[layer])
        ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        cell = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell, per_cell, axis=0))
        layer = last
    return np.concatenate(centres).astype(np.float32)


ANCHORS = ssd_anchors()


@dataclass(frozen=True)
class Detection:
    """A detected person in the detector's normalised square: box corners, 4 keypoints."""

    box: np.ndarray  # (4,) xmin, ymin, xmax, ymax
    keypoints: np.ndarray  # (4, 2) x, y; 0 = mid-hip, 1 = full-body scale and rotation
    score: float


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray) -> list[Detection]:
    """Detector outputs (2254, 12) and (2254, 1) to scored detections above threshold."""
    scores = sigmoid(np.clip(raw_scores[:, 0], -SCORE_CLIP, SCORE_CLIP))
    keep = np.flatnonzero(scores >= MIN_DETECTION_SCORE)
    raw = raw_boxes[keep] / BOX_SCALE
    anchors = ANCHORS[keep]
    centre = raw[:, 0:2] + anchors
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    return [Detection(boxes[i], keypoints[i], float(scores[k])) for i, k in enumerate(keep)]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(detections: list[Detection], threshold: float = NMS_IOU_THRESHOLD) -> list[Detection]:
    """MediaPipe's WEIGHTED suppression: each cluster of overlapping detections becomes one,
    with box and keypoints averaged by score, keeping the best score."""
    remaining = sorted(detections, key=lambda d: -d.score)
    merged = []
    while remaining:
        top = remaining[0]
        overlap = _iou(top.box, np.stack([d.box for d in remaining])) > threshold
        cluster = [d for d, o in zip(remaining, overlap, strict=True) if o]
        remaining = [d for d, o in zip(remaining, overlap, strict=True) if not o]
        weights = np.array([d.score for d in cluster], dtype=np.float64)
        weights /= weights.sum()
        box = np.tensordot(weights, np.stack([d.box for d in cluster]), axes=1)
        keypoints = np.tensordot(weights, np.stack([d.keypoints for d in cluster]), axes=1)
        merged.append(Detection(box.astype(np.float32), keypoints.astype(np.float32), top.score))
    return merged


def letterbox_roi(width: int, height: int) -> Roi:
    """The whole image, padded to a square around its centre (keep_aspect_ratio)."""
    return Roi(width / 2, height / 2, float(max(width, height)), 0.0)


def detection_roi(detection: Detection, detector_roi: Roi) -> Roi:
    """The landmark model's ROI: centred on the mid-hip keypoint, twice the distance to the
    scale keypoint (times 1.25), rotated so the body axis points up."""
    (x0, y0), (x1, y1) = to_image_pixels(detection.keypoints[:2].astype(np.float64), detector_roi)
    size = 2.0 * math.hypot(x1 - x0, y1 - y0) * ROI_SCALE
    angle = ROI_TARGET_ANGLE - math.atan2(-(y1 - y0), x1 - x0)
    rotation = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
    return Roi(float(x0), float(y0), size, rotation)


def refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Replace each ROI-normalised (x, y) by the confidence-weighted mean of the heatmap in a
    7x7 window around it, when the heatmap is confident there (max sigmoid >= 0.5)."""
    height, width, _ = heatmap.shape
    refined = xy.copy()
    offset = (HEATMAP_KERNEL - 1) // 2
    for i, (x, y) in enumerate(xy):
        col, row = int(x * width), int(y * height)  # C++ truncation toward zero, as MediaPipe
        if not (0 <= col < width and 0 <= row < height):
            continue
        rows = slice(max(0, row - offset), min(height, row + offset + 1))
        cols = slice(max(0, col - offset), min(width, col + offset + 1))
        confidence = sigmoid(heatmap[rows, cols, i].astype(np.float64))
        total = confidence.sum()
        if confidence.max() >= HEATMAP_MIN_CONFIDENCE and total > 0:
            grid_r, grid_c = np.mgrid[rows, cols]
            refined[i] = ((grid_c * confidence).sum() / width / total, (grid_r * confidence).sum() / height / total)
    return refined
