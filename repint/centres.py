"""Interpretations ``V``: k-means centres on flattened ψ of the reference set (scikit-learn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

__all__ = ["Centres", "assign_nearest", "kmeans_centres", "squared_distances"]


@dataclass
class Centres:
    """``centres`` ``[V, D]``, ``labels`` ``[N]`` (cluster of each reference image), ``input_index``
    ``[V]`` (the reference image nearest each centre: the input of that interpretation)."""

    centres: np.ndarray
    labels: np.ndarray
    input_index: np.ndarray


def kmeans_centres(features: np.ndarray, n_clusters: int, seed: int = 0) -> Centres:
    """k-means with ``n_clusters`` (clamped to the number of images) on ``features`` ``[N, ...]``."""
    flat = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    k = min(n_clusters, len(flat))
    km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(flat)  # k-means++, one init
    centres = km.cluster_centers_.astype(np.float32)
    return Centres(centres=centres, labels=km.labels_.astype(np.int64),
                   input_index=assign_nearest(centres, flat))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` squared Euclidean distances between flattened rows, in float64."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 ** 2).sum(1)[:, None] - 2 * a64 @ b64.T + (b64 ** 2).sum(1)[None, :]


def assign_nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each of ``points`` the index of the nearest of ``centres`` (Euclidean)."""
    p = np.asarray(points, dtype=np.float32).reshape(len(points), -1)
    c = np.asarray(centres, dtype=np.float32).reshape(len(centres), -1)
    return np.argmin(squared_distances(p, c), axis=1).astype(np.int64)
