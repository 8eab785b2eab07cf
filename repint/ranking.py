r"""Similarity ranking of covered images (Eq. 6).

.. math:: \mathrm{Dist}(x, x') = \sum_{h \in P(x)} |\langle \vec W_h, ψ(x)\rangle - \langle \vec W_h, ψ(x')\rangle|

with unit normals :math:`\vec W_h = W_h / \lVert W_h \rVert` (the paper), or raw ``W_h`` (the
authors' code, ``unit=False``). Beside it the rankings the case studies show: Euclidean neighbours in
``ψ`` (:func:`euclidean_neighbours`, the comparison of Figure 2) and the most representative
interpretations (:func:`most_representative`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from repint.distances import nearest_rows

__all__ = ["FeatureArray", "distinct_polytopes", "euclidean_neighbours", "most_representative", "rank_similar",
           "semantic_distance"]


class FeatureArray(Protocol):
    """Features ``[N, ...]`` read by slices: a numpy array, or a zarr array too large to read at once."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: int | slice, /) -> np.ndarray: ...


def semantic_distance(W: np.ndarray, psi_x: np.ndarray, psi_others: np.ndarray, unit: bool = True) -> np.ndarray:
    """Eq. 6 distances ``[n]`` between ``ψ(x)`` and each of ``psi_others`` ``[n, ...]`` over boundaries ``W``."""
    Wf = np.asarray(W, dtype=np.float64).reshape(len(W), -1)
    if unit:
        norms = np.linalg.norm(Wf, axis=1, keepdims=True)
        Wf = Wf / np.where(norms > 0, norms, 1.0)
    px = Wf @ np.asarray(psi_x, dtype=np.float64).reshape(-1)
    po = np.asarray(psi_others, dtype=np.float64).reshape(len(psi_others), -1) @ Wf.T
    return np.abs(po - px).sum(axis=1)


def rank_similar(W: np.ndarray, psi_x: np.ndarray, psi_others: np.ndarray, unit: bool = True) -> np.ndarray:
    """Positions of ``psi_others`` from most to least similar (stable for equal distances)."""
    return np.argsort(semantic_distance(W, psi_x, psi_others, unit), kind="stable")


def euclidean_neighbours(features: FeatureArray, x: int, top: int = 4, block: int = 1024) -> np.ndarray:
    r"""The ``top`` rows of ``features`` ``[N, ...]`` nearest to row ``x`` in flattened float64 Euclidean
    distance, :math:`\lVert ψ(x') - ψ(x) \rVert^2` (``((ψ64(x') - ψ64(x)) ** 2).sum()``), ``x`` itself
    excluded (ties: lowest index; with ``top >= N`` it comes last). Read ``block`` rows at a time, so
    ``features`` never needs to fit in memory at once: float32 distances with their error bound, and the
    float64 ones for the rows that may be among the ``top`` only (:func:`repint.distances.nearest_rows`,
    the same rows in the same order as float64 everywhere)."""
    return nearest_rows(lambda lo, hi: np.asarray(features[lo:hi]), features.shape[0], x, top, block)


def most_representative(n_covered: np.ndarray, n: int) -> list[int]:
    """The ``n`` interpretations whose polytopes cover the most reference images, ``|P ∩ R|`` from
    ``n_covered`` ``[V]``, most first (ties: lowest id)."""
    return [int(c) for c in np.argsort(-np.asarray(n_covered), kind="stable")[:n]]


def distinct_polytopes(covered: np.ndarray) -> np.ndarray:
    """Which interpretations are one: ``[V]`` the index of the first interpretation with the same covered
    set (row of ``covered`` ``[V, N]``); ``len(np.unique(out))`` is the number of distinct polytopes.
    Centres of one class often share one polytope, so ``|V|`` centres may be fewer interpretations."""
    covered = np.asarray(covered, dtype=bool)
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(np.packbits(row).tobytes() + len(row).to_bytes(8, "little"), v)
                     for v, row in enumerate(covered)], dtype=np.int64)
