"""Sign bits: the side of each image for each boundary, ``s_h(x') = <W_h, ψ(x')> + b_h > 0``.

Stored packed along the boundary axis (``np.packbits(..., bitorder="little")``), one row per image,
so that a chunk of images is a chunk of rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_signs", "packed_columns", "select_signs", "sign_bits", "sign_matrix", "unpack_signs"]


def sign_matrix(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean ``[n, M]``: ``<W_h, ψ(x)> + b_h > 0``. ``features`` ``[n, ...]``, ``W`` ``[M, D]``."""
    flat = np.ascontiguousarray(features, dtype=np.float32).reshape(len(features), -1)
    if flat.shape[1] != W.shape[1]:
        raise ValueError(f"Features have {flat.shape[1]} dimensions but boundaries have {W.shape[1]}.")
    return (flat @ np.asarray(W, dtype=np.float32).T).astype(np.float64) + np.asarray(b, dtype=np.float64) > 0


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """Pack a boolean ``[n, M]`` matrix into ``uint8`` ``[n, ceil(M / 8)]`` (little bit order)."""
    return np.packbits(signs, axis=1, bitorder="little")


def unpack_signs(packed: np.ndarray, n_boundaries: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`."""
    return np.unpackbits(packed, axis=1, count=n_boundaries, bitorder="little").astype(bool)


def packed_columns(cols: np.ndarray) -> np.ndarray:
    """The byte columns of a packed sign matrix that hold the boundary columns ``cols``, ascending."""
    return np.unique(np.asarray(cols, dtype=np.int64) // 8)


def select_signs(packed: np.ndarray, byte_cols: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Boolean ``[n, len(cols)]``: boundary columns ``cols`` of a packed sign matrix of which ``packed``
    ``[n, len(byte_cols)]`` holds only the byte columns ``byte_cols`` (:func:`packed_columns`): bit
    ``j`` is bit ``j % 8`` of byte ``j // 8`` (little bit order). Equal to
    ``unpack_signs(whole, M)[:, cols]`` without unpacking the other columns."""
    cols = np.asarray(cols, dtype=np.int64)
    at = np.searchsorted(byte_cols, cols // 8)
    return ((packed[:, at] >> (cols % 8).astype(np.uint8)) & 1).astype(bool)


def sign_bits(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Packed sign bits ``uint8`` ``[n, ceil(M / 8)]`` of ``features`` against boundaries ``(W, b)``."""
    return pack_signs(sign_matrix(features, W, b))
