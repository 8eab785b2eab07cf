r"""The maths of drift between two versions of the interpretations (``reinterpret`` after retraining).

Images are identified by their ids, so two versions may hold the same reference images in another
order or overlapping sets of them. The covers ``[V, N]`` of each version's polytopes are aligned on
the sorted union ``U`` of the two id lists (:func:`align_covers`); centres are matched within their
predicted class by the Jaccard index of what they cover,

.. math:: J(A, B) = \frac{|A \cap B|}{|A \cup B|} \quad (0 \text{ when } A = B = \emptyset),

one to one with maximum total ``J`` (Hungarian assignment, :func:`match_centres`); and the heat maps
of a matched pair are compared on shared images by the Pearson correlation

.. math:: r(a, b) = \frac{\sum_i (a_i - \bar a)(b_i - \bar b)}
                         {\sqrt{\sum_i (a_i - \bar a)^2 \sum_i (b_i - \bar b)^2}}

(:func:`pearson_rows`, NaN for a constant map), on the images :func:`compared_images` picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["AlignedCovers", "align_covers", "compared_images", "jaccard_matrix", "match_centres", "pearson_rows"]


def jaccard_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``J[i, j]`` = Jaccard index of rows ``a[i]`` and ``b[j]`` (boolean ``[n, N]``, ``[m, N]``); 0 when
    both are empty."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_centres(jaccard: np.ndarray, cls_new: np.ndarray, cls_prev: np.ndarray) -> list[int | None]:
    """For each new centre, the previous centre of the same class it is matched to (maximum total
    Jaccard, one to one), or ``None`` when there is none left."""
    match: list[int | None] = [None] * jaccard.shape[0]
    for c in np.union1d(cls_new, cls_prev):
        rows, cols = np.flatnonzero(cls_new == c), np.flatnonzero(cls_prev == c)
        if len(rows) == 0 or len(cols) == 0:
            continue
        r, k = linear_sum_assignment(-jaccard[np.ix_(rows, cols)])
        for i, j in zip(r, k, strict=True):
            match[int(rows[i])] = int(cols[j])
    return match


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of rows of ``a`` and ``b`` (flattened); NaN where a row is
    constant."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class AlignedCovers:
    """Two versions' covers on the sorted union ``universe`` ``[U]`` of their image ids: ``pos_new``
    ``[N_new]`` / ``pos_prev`` ``[N_prev]`` are the positions in ``universe`` of each version's images
    (in the version's own order), ``row_new`` / ``row_prev`` ``[U]`` the inverse (the row of each image
    in the version, -1 where it does not hold it), ``new`` ``[V_new, U]`` / ``prev`` ``[V_prev, U]`` the
    covers (False on the images a version does not hold)."""

    universe: np.ndarray
    pos_new: np.ndarray
    pos_prev: np.ndarray
    row_new: np.ndarray
    row_prev: np.ndarray
    new: np.ndarray
    prev: np.ndarray


def align_covers(ids_new: np.ndarray, cover_new: np.ndarray, ids_prev: np.ndarray,
                 cover_prev: np.ndarray) -> AlignedCovers:
    """Align the boolean covers ``[V, N]`` of two versions, each over its own (distinct) image ids
    ``[N]``, on the sorted union of the ids: ``new[v, pos_new[i]] = cover_new[v, i]``, likewise ``prev``."""
    universe = np.union1d(ids_prev, ids_new)
    pos_p, pos_n = np.searchsorted(universe, ids_prev), np.searchsorted(universe, ids_new)
    a = np.zeros((len(cover_new), len(universe)), bool)
    a[:, pos_n] = cover_new
    b = np.zeros((len(cover_prev), len(universe)), bool)
    b[:, pos_p] = cover_prev
    row_n, row_p = np.full(len(universe), -1, np.int64), np.full(len(universe), -1, np.int64)
    row_n[pos_n], row_p[pos_p] = np.arange(len(pos_n)), np.arange(len(pos_p))
    return AlignedCovers(universe=universe, pos_new=pos_n, pos_prev=pos_p, row_new=row_n, row_prev=row_p,
                         new=a, prev=b)


def compared_images(aligned: AlignedCovers, v: int, j: int, input_new: str, input_prev: str,
                    max_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The images on which new centre ``v`` and its match, previous centre ``j``, are compared: those
    both polytopes cover, or when there are none the two centres' inputs (ids ``input_new``,
    ``input_prev``); of these the ones both versions hold, thinned to ``max_images`` evenly spaced ones
    (in id order). Returns their rows in the new and in the previous version's store."""
    shared = np.flatnonzero(aligned.new[v] & aligned.prev[j])
    if len(shared) == 0:  # nothing covered in common: compare on the two inputs
        shared = np.intersect1d(aligned.universe, [input_new, input_prev], return_indices=True)[1]
    shared = shared[(aligned.row_new[shared] >= 0) & (aligned.row_prev[shared] >= 0)]
    if len(shared) > max_images:
        shared = shared[np.linspace(0, len(shared) - 1, max_images).round().astype(int)]
    return aligned.row_new[shared], aligned.row_prev[shared]
