"""The face mesh (MediaPipe face_landmark, 468 points) on a face ROI derived from the pose.

MediaPipe finds the face ROI with a face detector; the pose already tells us where the eyes,
ears, nose and mouth are, so the ROI is built from those: centred between eyes and mouth,
rotated with the eye line, sized from the face width.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from services.common.contracts import LANDMARK_INDEX, PoseResult
from services.common.inference import Infer
from services.common.mediapipe_models import FACE_LANDMARK
from services.common.roi import Roi, crop, to_image_pixels
from services.pose.blazepose import sigmoid

MESH_SIZE = 192
MIN_FACE_SCORE = 0.5
MIN_FACE_PIXELS = 12  # below this the face is too small for the mesh to mean anything
# Face-mesh vertex ids around the face's silhouette, in order (MediaPipe's FACEMESH_FACE_OVAL).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip


def face_roi(pose: PoseResult) -> Roi | None:
    """The face-mesh ROI, or None when the face is not visible enough to place one."""
    lm = pose.landmark_array()
    pick = lambda *names: lm[[LANDMARK_INDEX[n] for n in names]]  # noqa: E731
    face_points = pick("nose", "left_eye", "right_eye", "mouth_left", "mouth_right")
    if face_points[:, 3].min() < 0.5:
        return None
    left_eye, right_eye = pick("left_eye")[0, :2], pick("right_eye")[0, :2]
    mouth = pick("mouth_left", "mouth_right")[:, :2].mean(axis=0)
    eyes = (left_eye + right_eye) / 2
    ears = pick("left_ear", "right_ear")[:, :2]
    # Face width: ear to ear when frontal; eyes-to-mouth scales better when turned away.
    width = max(float(np.linalg.norm(ears[0] - ears[1])), 2.1 * float(np.linalg.norm(mouth - eyes)))
    if width < MIN_FACE_PIXELS:
        return None
    centre = eyes * 0.6 + mouth * 0.4
    rotation = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
    return Roi(float(centre[0]), float(centre[1]), 1.7 * width, rotation)


def face_mesh(image: np.ndarray, pose: PoseResult, infer: Infer) -> np.ndarray | None:
    """(468, 2) face-mesh points in image pixels, or None if no face is found."""
    roi = face_roi(pose)
    if roi is None:
        return None
    pixels = crop(image, roi, MESH_SIZE, cv2.BORDER_REPLICATE).astype(np.float32) / 255.0
    out = infer(FACE_LANDMARK.name, {FACE_LANDMARK.input_name: pixels[None]})
    mesh, flag = (out[name][0] for name in FACE_LANDMARK.output_names)
    if float(sigmoid(flag.ravel()[0])) < MIN_FACE_SCORE:
        return None
    points = mesh.reshape(-1, 3)[:, :2] / MESH_SIZE
    return to_image_pixels(points.astype(np.float64), roi)


def face_oval(mesh: np.ndarray) -> np.ndarray:
    """(36, 2) polygon of the face's outline: hairline, temples, jaw and chin."""
    return mesh[list(FACE_OVAL)]
