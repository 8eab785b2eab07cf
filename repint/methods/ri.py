"""RI: the polytope's boundaries drawn as Grad-CAM-like maps (Sec. 5.1, Eq. 5)."""

from __future__ import annotations

import numpy as np

from repint.heatmaps import boundary_channel_weights
from repint.methods.base import CAMMethod, InterpretationInput, register


@register
class RI(CAMMethod):
    """``α_k`` of each boundary of ``P(x)``, oriented at ``ψ(x)``; the map is the mean over boundaries."""

    name = "RI"

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        if inp.boundaries_W is None or inp.boundaries_b is None:
            raise ValueError("RI needs the polytope's boundaries.")
        if len(inp.boundaries_W) == 0:  # no other-class image to exclude: no boundary, no map
            return np.zeros((1, inp.features.shape[0]), dtype=np.float32)
        return boundary_channel_weights(inp.boundaries_W, inp.boundaries_b, inp.features, orient=inp.orient)
