r"""Similarity ranking of covered images (Eq. 6).

.. math:: \mathrm{Dist}(x, x') = \sum_{h \in P(x)} |\langle \vec W_h, ψ(x)\rangle - \langle \vec W_h, ψ(x')\rangle|

with unit normals :math:`\vec W_h = W_h / \lVert W_h \rVert` (the paper), or raw ``W_h`` (the
authors' code, ``unit=False``). Beside it the rankings the case studies show: Euclidean neighbours in
``ψ`` (:func:`euclidean_neighbours`, the comparison of Figure 2) and the most representative
interpretations (:func:`most_representative`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from repint.distances import nearest_rows

__all__ = ["FeatureArray", "covered_neighbours", "distinct_polytopes", "euclidean_neighbours", "most_representative",
           "rank_similar", "semantic_distance"]


class FeatureArray(Protocol):
    """Features ``[N, ...]`` read by slices: a numpy array, or a zarr array too large to read at once."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: int | slice, /) -> np.ndarray: ...


def _normals(W: np.ndarray, unit: bool) -> np.ndarray:
    """``W`` ``[P, ...]`` flattened to float64 ``[P, D]``; with ``unit``, each non-zero row divided by its norm."""
    Wf = np.asarray(W, dtype=np.float64).reshape(len(W), -1)
    if unit:
        norms = np.linalg.norm(Wf, axis=1, keepdims=True)
        Wf = Wf / np.where(norms > 0, norms, 1.0)
    return Wf


def _eq6(Wf: np.ndarray, px: np.ndarray, psi_others: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(psi_others, dtype=np.float64).reshape(len(psi_others), -1) @ Wf.T - px).sum(axis=1)


def semantic_distance(W: np.ndarray, psi_x: np.ndarray, psi_others: np.ndarray, unit: bool = True) -> np.ndarray:
    """Eq. 6 distances ``[n]`` between ``ψ(x)`` and each of ``psi_others`` ``[n, ...]`` over boundaries ``W``."""
    Wf = _normals(W, unit)
    return _eq6(Wf, Wf @ np.asarray(psi_x, dtype=np.float64).reshape(-1), psi_others)


def rank_similar(W: np.ndarray, psi_x: np.ndarray, psi_others: np.ndarray, unit: bool = True) -> np.ndarray:
    """Positions of ``psi_others`` from most to least similar (stable for equal distances)."""
    return np.argsort(semantic_distance(W, psi_x, psi_others, unit), kind="stable")


def covered_neighbours(features: FeatureArray, W: np.ndarray,
                       queries: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], top: int, unit: bool = True,
                       block: int = 1024) -> list[np.ndarray]:
    """For each query ``(ids, psi_x, covered)``: the ``top`` rows of ``covered`` (ascending row indices of
    ``features`` ``[N, ...]``) most similar to ``ψ(x)`` by Eq. 6 over the boundaries ``W[ids]`` (``W``
    ``[Q, ...]``), most similar first, ties to the lowest index; with no boundaries, the first ``top`` of
    ``covered``. The same rows as ``covered[rank_similar(W[ids], psi_x, features[covered], unit)[:top]]``
    (where two distances differ by less than their rounding, products of other shapes may order them
    otherwise, as two BLAS calls may), but ``features`` is read ``block`` rows at a time, each block once
    for all queries and only where some query covers a row of it; queries with the same boundaries
    (centres that share a polytope) share their projections. Memory: one block, and per query its cover,
    ``|P|`` projections of ``ψ(x)`` and ``top`` candidates, whatever ``N`` and however many rows a
    polytope covers."""
    groups: dict[tuple[int, ...], list[int]] = {}
    px, covers, blocks = [], [], [np.zeros(0, np.int64)]
    for j, (ids, psi_x, covered) in enumerate(queries):  # ψ(x) is not kept: ``queries`` may be a generator
        ids = tuple(int(i) for i in np.asarray(ids).reshape(-1))
        px.append(_normals(W[list(ids)], unit) @ np.asarray(psi_x, np.float64).reshape(-1) if ids else None)
        covers.append(np.asarray(covered, np.int64))
        if ids and len(covers[j]):
            groups.setdefault(ids, []).append(j)
            blocks.append(np.unique(covers[j] // block))
    best = [(c[:0], np.zeros(0)) for c in covers]
    n = features.shape[0]
    for b in np.unique(np.concatenate(blocks)) if top > 0 else []:
        lo, hi = int(b) * block, min(n, (int(b) + 1) * block)
        x = None
        for ids, members in groups.items():
            spans = [(j, *np.searchsorted(covers[j], [lo, hi])) for j in members]
            spans = [(j, a, z) for j, a, z in spans if a < z]
            if not spans:
                continue
            if x is None:  # the block in float64 once, for every polytope that covers a row of it
                x = np.asarray(features[lo:hi], dtype=np.float64).reshape(hi - lo, -1)
            rows = np.unique(np.concatenate([covers[j][a:z] for j, a, z in spans]))
            proj = x[rows - lo] @ _normals(W[list(ids)], unit).T
            for j, a, z in spans:
                mine = covers[j][a:z]
                dist = np.abs(proj[np.searchsorted(rows, mine)] - px[j]).sum(axis=1)
                idx, dist = np.concatenate([best[j][0], mine]), np.concatenate([best[j][1], dist])
                keep = np.argsort(dist, kind="stable")[:top]  # earlier rows first among equals: global stable order
                best[j] = (idx[keep], dist[keep])
    return [covers[j][:top] if px[j] is None else best[j][0] for j in range(len(covers))]


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


def distinct_polytopes(covered: Iterable[np.ndarray]) -> np.ndarray:
    """Which interpretations are one: ``[V]`` the index of the first interpretation with the same covered
    set (row of ``covered`` ``[V, N]``, or the rows one by one: a store's ``polytopes/covered`` need not
    be read whole); ``len(np.unique(out))`` is the number of distinct polytopes. Centres of one class often
    share one polytope, so ``|V|`` centres may be fewer interpretations. Sets are told apart by the
    SHA-256 of their packed bits and size (32 bytes kept per distinct set, not ``N / 8``)."""
    first: dict[bytes, int] = {}
    out = []
    for v, row in enumerate(covered):
        row = np.asarray(row, dtype=bool).reshape(-1)
        key = hashlib.sha256(np.packbits(row).tobytes() + len(row).to_bytes(8, "little")).digest()
        out.append(first.setdefault(key, v))
    return np.array(out, dtype=np.int64)
