"""RI: the polytope's boundaries drawn as Grad-CAM-like maps (Sec. 5.1, Eq. 5)."""

from __future__ import annotations

import numpy as np

from repint.heatmaps import boundary_channel_weights, oriented_boundaries, spatial_maps
from repint.methods.base import CAMMethod, InterpretationInput, Method, register


@register
class RI(CAMMethod):
    """``α_k`` of each boundary of ``P(x)``, oriented at ``ψ(x)``; the map is the mean over boundaries."""

    name = "RI"
    paper_order = 0
    uses_polytope = True

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        if inp.boundaries_W is None or inp.boundaries_b is None:
            raise ValueError("RI needs the polytope's boundaries.")
        if len(inp.boundaries_W) == 0:  # no other-class image to exclude: no boundary, no map
            return np.zeros((1, inp.features.shape[0]), dtype=np.float32)
        return boundary_channel_weights(inp.boundaries_W, inp.boundaries_b, inp.features, orient=inp.orient)


@register
class RIExact(Method):
    """A named improvement over faithful RI (not the paper's method): each boundary of ``P(x)`` drawn
    with its full spatial normal, ``ReLU(Σ_k W^k_ij ψ^k_ij(x'))``, instead of the spatial mean
    ``α_k`` of Sec. 5.1. Since ``<W, ψ(x')> = Σ_ij Σ_k W^k_ij ψ^k_ij(x')``, the map is the exact share
    of each position in the boundary's decision value, where the mean spreads a channel's weight
    over positions in which the boundary puts none (e.g. the borders of an image)."""

    name = "RI-exact"
    uses_polytope = True

    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        if inp.boundaries_W is None or inp.boundaries_b is None:
            raise ValueError("RI-exact needs the polytope's boundaries.")
        K, h, w = inp.features.shape
        if len(inp.boundaries_W) == 0:
            return {"W": np.zeros((1, K, h, w), dtype=np.float32)}
        W = oriented_boundaries(inp.boundaries_W, inp.boundaries_b, inp.features, orient=inp.orient)
        return {"W": W.reshape(len(W), K, h, w).astype(np.float32)}

    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        return spatial_maps(interpretation["W"], features, size=images.shape[-2:])
