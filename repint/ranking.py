r"""Similarity ranking of covered images (Eq. 6).

.. math:: \mathrm{Dist}(x, x') = \sum_{h \in P(x)} |\langle \vec W_h, ψ(x)\rangle - \langle \vec W_h, ψ(x')\rangle|

with unit normals :math:`\vec W_h = W_h / \lVert W_h \rVert` (the paper), or raw ``W_h`` (the
authors' code, ``unit=False``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_similar", "semantic_distance"]


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
