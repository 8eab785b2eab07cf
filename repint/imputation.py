r"""ROAD's noisy linear imputation (Rong et al., ICML 2022) of removed pixels, for a batch of images at
once: the ROAD authors' linear system (pytorch-grad-cam's ``NoisyLinearImputer``) built vectorised as one
block-diagonal sparse matrix, plus seeded Gaussian noise (:func:`road_impute`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NEIGHBOUR_WEIGHTS", "road_impute"]

#: the ROAD authors' weights of the 8 neighbours ``(row offset, column offset) -> w`` (pytorch_grad_cam's road.py)
NEIGHBOUR_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
                     ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
_MAX_UNKNOWNS = 262_144  # pixels solved in one sparse system (bounds the factorisation's memory)


def _linear_fill(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The noiseless linear imputation of the removed pixels of several images at once: the system of
    ``NoisyLinearImputer.setup_sparse_system`` (the ROAD authors'), built with numpy for all images as
    one block-diagonal sparse matrix and solved by one ``spsolve`` (float64). Returns ``[m, C]`` values
    for the removed pixels in the order of ``np.flatnonzero(removed)``."""
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import spsolve

    n, C, H, W = images.shape
    flat = removed.reshape(-1)
    idx = np.flatnonzero(flat)
    var = np.full(flat.shape, -1, dtype=np.int64)
    var[idx] = np.arange(len(idx))
    img, pix = np.divmod(idx, H * W)
    r, c = np.divmod(pix, W)
    values = images.transpose(0, 2, 3, 1).reshape(-1, C).astype(np.float64)
    diag = np.ones(len(idx))
    rhs = np.zeros((len(idx), C))
    rows, cols, data = [], [], []
    for (dr, dc), w in NEIGHBOUR_WEIGHTS:
        rr, cc = r + dr, c + dc
        valid = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        diag[~valid] -= w
        at = np.flatnonzero(valid)
        q = img[at] * H * W + rr[at] * W + cc[at]
        unknown = flat[q]
        rows.append(at[unknown])
        cols.append(var[q[unknown]])
        data.append(np.full(int(unknown.sum()), w))
        np.subtract.at(rhs, at[~unknown], w * values[q[~unknown]])
    m = len(idx)
    A = coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)).tocsc()
    solution = spsolve((A + diags(-diag)).tocsc(), rhs)
    return np.asarray(solution, dtype=np.float64).reshape(m, C)


def _fill_batch(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Images with their removed pixels linearly filled (no noise); all-removed images become 0."""
    out = images.astype(np.float32, copy=True)
    solvable = removed.any(axis=(1, 2)) & ~removed.all(axis=(1, 2))
    out[removed.all(axis=(1, 2))] = 0.0
    todo = np.flatnonzero(solvable)
    counts = removed[todo].sum(axis=(1, 2))
    start = 0
    while start < len(todo):  # groups of images whose unknowns fit one system
        stop = start + 1
        while stop < len(todo) and counts[start: stop + 1].sum() <= _MAX_UNKNOWNS:
            stop += 1
        sel = todo[start:stop]
        filled = _linear_fill(out[sel], removed[sel])
        block = out[sel].transpose(0, 2, 3, 1)  # [k, H, W, C]
        block[removed[sel]] = filled
        out[sel] = block.transpose(0, 3, 1, 2)
        start = stop
    return out


def road_impute(images: np.ndarray, remove_mask: np.ndarray, noise: float = 0.01, seed: int = 0,
                seeds: Sequence[Any] | None = None) -> np.ndarray:
    r"""Noisy linear imputation of ROAD (Rong et al., ICML 2022) of the pixels ``remove_mask`` ``[n, H, W]`` (True):

    .. math::

        x_p = \frac{\sum_{q \in N(p)} w_{pq}\, x_q}{\sum_{q \in N(p)} w_{pq}} \;\; (p \text{ removed}), \qquad
        \hat x_p = x_p + \sigma\, \varepsilon_p, \quad \varepsilon \sim \mathcal N(0, 1)

    per channel, ``N(p)`` the 8-neighbours inside the image, ``w = 1/6`` (edge) and ``1/12`` (diagonal); a removed
    neighbour is an unknown, so the removed pixels are one sparse linear system: the system of the authors'
    ``NoisyLinearImputer`` (pytorch_grad_cam), built vectorised for a batch of images and solved at once
    (tested equal to theirs with its noise off). The noise ``ε`` of image ``j`` is
    ``default_rng(seed + j).standard_normal((C, H, W))`` at the removed pixels (a pixel's draw does not depend on which
    others are removed; torch's global RNG is neither used nor advanced), or from ``default_rng(seeds[j])``
    where ``seeds`` gives each image its own (an int or a tuple of ints, e.g. its index in the whole set).
    Kept pixels are returned bit-identical; nothing is clipped. An image with every pixel removed has no
    data to interpolate: it becomes ``0 + σε``.
    """
    images, remove_mask = np.asarray(images), np.asarray(remove_mask, dtype=bool)
    if images.ndim != 4 or remove_mask.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images [n, C, H, W] and remove_mask [n, H, W] disagree: {images.shape}, "
                         f"{remove_mask.shape}")
    if len(images) == 0:
        return images.copy()
    own = list(seeds) if seeds is not None else list(seed + np.arange(len(images)))
    return _impute(images, remove_mask, noise, own)


def _impute(images: np.ndarray, remove_mask: np.ndarray, noise: float, seeds: Sequence[Any]) -> np.ndarray:
    filled = _fill_batch(images, remove_mask)
    out = np.array(images, copy=True)
    for j in np.flatnonzero(remove_mask.any(axis=(1, 2))):
        value = filled[j][:, remove_mask[j]].astype(np.float64)
        if noise:
            rng = np.random.default_rng(seeds[j] if isinstance(seeds[j], tuple) else int(seeds[j]))
            value += noise * rng.standard_normal(out.shape[1:])[:, remove_mask[j]]
        out[j][:, remove_mask[j]] = value
    return out
