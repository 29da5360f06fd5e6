"""Thin-plate splines: fitted here in numpy, evaluated densely by the garment_warp model.

A spline maps person-canvas points (in canvas units: pixels / the canvas's longer side, so
that distances are isotropic) to garment sampling coordinates (grid_sample's [-1, 1], corners
aligned). The smoothing term `regularisation` weights the spline's bending energy, the
integral of its squared second derivatives: 0 interpolates the correspondences exactly,
larger values trade exactness for a smoother, less folded warp.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 40  # control points per part; unused ones are padded with zero weight


def radial(r2: np.ndarray) -> np.ndarray:
    """The TPS kernel U = r^2 log r^2, with U(0) = 0."""
    return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-12)), 0.0)


def fit(source: np.ndarray, target: np.ndarray, regularisation: float) -> np.ndarray:
    """Weights (N + 3, 2) of the spline taking (N, 2) `source` points near (N, 2) `target`."""
    n = len(source)
    kernel = radial(((source[:, None, :] - source[None, :, :]) ** 2).sum(-1))
    affine = np.hstack([np.ones((n, 1)), source])
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel + regularisation * np.eye(n)
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = target
    return np.linalg.lstsq(system, rhs, rcond=None)[0]


def evaluate(source: np.ndarray, weights: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The spline fitted on `source` at (M, 2) `points` (the model does the same in torch)."""
    n = len(source)
    kernel = radial(((points[:, None, :] - source[None, :, :]) ** 2).sum(-1))
    return kernel @ weights[:n] + weights[n] + points @ weights[n + 1 :]


def padded(source: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MAX_POINTS, 2) control points and (MAX_POINTS + 3, 2) weights: the affine part last,
    extra points with zero weight (they add nothing), as the model's fixed shapes need."""
    n = len(source)
    if n > MAX_POINTS:
        raise ValueError(f"{n} control points > MAX_POINTS ({MAX_POINTS})")
    points = np.zeros((MAX_POINTS, 2), np.float32)
    points[:n] = source
    full = np.zeros((MAX_POINTS + 3, 2), np.float32)
    full[:n] = weights[:n]
    full[MAX_POINTS:] = weights[n:]
    return points, full
