"""Per-photo colour models: a few k-means clusters with their spreads, fitted on pixels that
the geometry says belong to one class (skin from the face, garment from the torso core)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

MIN_SAMPLES = 12
MAX_SAMPLES = 1500


@dataclass(frozen=True)
class ColourModel:
    means: np.ndarray  # (K, 3)
    inv_var: np.ndarray  # (K, 3)
    log_norm: np.ndarray  # (K,): 0.5 * sum(log var) - log(weight)

    def cluster_nll(self, pixels: np.ndarray) -> np.ndarray:
        """(N, K) negative log-likelihood of (N, 3) pixels under each cluster.

        0.5 * sum_c (x_c - m_c)^2 / v_c, expanded into two small matrix products so that
        no (N, K, 3) temporary is built."""
        quadratic = (pixels * pixels) @ (0.5 * self.inv_var.T) - pixels @ (self.means * self.inv_var).T
        constant = 0.5 * (self.means * self.means * self.inv_var).sum(axis=1) + self.log_norm
        return quadratic + constant[None]

    def nll(self, pixels: np.ndarray) -> np.ndarray:
        """Negative log-likelihood of (N, 3) pixels under the best-fitting cluster."""
        # A running minimum over the K columns: numpy's min over a short last axis is ~15x slower.
        return functools.reduce(np.minimum, self.cluster_nll(pixels).T)

    def assign(self, pixels: np.ndarray) -> np.ndarray:
        """(N,) index of the best-fitting cluster of each of (N, 3) pixels."""
        return self.cluster_nll(pixels).argmin(axis=1)


def fit(samples: np.ndarray, clusters: int, min_std: np.ndarray) -> ColourModel | None:
    """Fit `clusters` diagonal Gaussians to (N, 3) samples by k-means; None if too few samples.
    `min_std` (3,) floors each channel's spread."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) < MIN_SAMPLES:
        return None
    clusters = max(1, min(clusters, len(samples) // MIN_SAMPLES))
    if len(samples) > MAX_SAMPLES:  # k-means on a subsample: the colours, not the count, matter
        samples = samples[np.linspace(0, len(samples) - 1, MAX_SAMPLES).astype(np.intp)]
    # Deterministic start (lightness quantiles) rather than k-means++, whose draws come from
    # OpenCV's process-wide generator and would make a photo's parse depend on the ones before.
    start = (np.argsort(np.argsort(samples[:, 0])) * clusters // len(samples)).astype(np.int32)[:, None]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, centres = cv2.kmeans(samples, clusters, start, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    labels = labels.ravel()
    means, variances, weights = [], [], []
    for k in range(clusters):
        members = samples[labels == k]
        if len(members) < 3:
            continue
        means.append(centres[k])
        variances.append(np.maximum(members.var(axis=0), min_std**2))
        weights.append(len(members) / len(samples))
    var = np.array(variances, dtype=np.float32)
    return ColourModel(
        means=np.array(means, dtype=np.float32),
        inv_var=1.0 / var,
        log_norm=(0.5 * np.log(var).sum(axis=1) - np.log(np.array(weights))).astype(np.float32),
    )
