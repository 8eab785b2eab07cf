r"""Grad-CAM-like heat maps from channel weights (Sec. 5.1).

For a boundary ``h = (W, b)`` oriented so that :math:`\langle W, ψ(x)\rangle + b > 0` at the input
``x``, the channel weight is the spatial mean :math:`α_k = \frac{1}{Z}\sum_{i,j} W^k_{ij}`; the map of
an image ``x'`` is :math:`\mathrm{ReLU}(\sum_k α_k ψ^k(x'))`, upsampled bilinearly to the input size
and min-max normalised to ``[0, 1]`` (an all-zero map stays zero). A polytope's map is the mean of
its boundaries' maps. The same ``α`` (from ``x``) are reused for every other image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["boundary_channel_weights", "cam_maps", "normalise_maps", "oriented_boundaries", "overlay_map",
           "spatial_maps"]


def oriented_boundaries(W: np.ndarray, b: np.ndarray, psi_x: np.ndarray, orient: bool = True) -> np.ndarray:
    r"""Boundaries ``W`` ``[P, K*h*w]`` (or ``[P, K, h, w]``) as ``[P, K, h*w]`` float64; ``orient`` flips
    each to ``x``'s positive side, :math:`\langle W, ψ(x)\rangle + b \ge 0` (the paper); ``False``
    keeps the raw sign (the authors' code)."""
    K = psi_x.shape[0]
    Wr = np.asarray(W, dtype=np.float64).reshape(len(W), K, -1)
    if orient:
        side = Wr.reshape(len(W), -1) @ psi_x.reshape(-1).astype(np.float64) + np.asarray(b, dtype=np.float64)
        Wr = Wr * np.where(side >= 0, 1.0, -1.0)[:, None, None]
    return Wr


def boundary_channel_weights(W: np.ndarray, b: np.ndarray, psi_x: np.ndarray, orient: bool = True) -> np.ndarray:
    """Channel weights ``[P, K]`` (the spatial mean of each oriented boundary, Sec. 5.1) of boundaries
    ``W`` at input ``ψ(x)`` ``[K, h, w]``; see :func:`oriented_boundaries`."""
    return oriented_boundaries(W, b, psi_x, orient).mean(axis=2)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map over its last two axes; a constant map becomes zero."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def cam_maps(alpha: np.ndarray, features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Heat maps ``[n, H, W]`` in ``[0, 1]``: the mean over the ``P`` rows of ``alpha`` ``[P, K]`` of the
    normalised, upsampled ``ReLU(Σ_k α_k ψ^k)`` for each feature map of ``features`` ``[n, K, h, w]``."""
    a = torch.as_tensor(np.atleast_2d(alpha), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    raw = torch.relu(torch.einsum("pk,nkhw->nphw", a, f))
    up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    return normalise_maps(up).mean(dim=1).numpy()


def spatial_maps(W: np.ndarray, features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    r"""Heat maps ``[n, H, W]`` of oriented boundaries ``W`` ``[P, K, h, w]`` without the spatial mean:
    :math:`\mathrm{ReLU}(\sum_k W^k_{ij} ψ^k_{ij}(x'))`, the exact share of position ``(i, j)`` in the
    boundary's value :math:`\langle W, ψ(x')
angle`, upsampled, normalised, averaged over ``P``."""
    w = torch.as_tensor(np.asarray(W), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    raw = torch.relu(torch.einsum("pkhw,nkhw->nphw", w, f))
    up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    return normalise_maps(up).mean(dim=1).numpy()


def display_image(image: np.ndarray) -> np.ndarray:
    """A pixel-space image ``[C, H, W]`` as ``[H, W, 3]`` in ``[0, 1]`` for drawing (grey images repeated)."""
    hwc = np.clip(np.asarray(image, dtype=np.float32).transpose(1, 2, 0), 0, 1)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc


def overlay_map(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A heat map in ``[0, 1]`` blended over an ``[H, W, 3]`` image in ``[0, 1]`` as every figure draws
    it (jet at 50%)."""
    from matplotlib import colormaps

    return 0.5 * rgb + 0.5 * colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
