r"""Grad-CAM-exact: the matching control of RI-exact (method.md, "Reporting").

Its interpretation of a centre is the whole spatial gradient tensor of the class logit at the
centre's input image ``x`` (not Grad-CAM's spatial mean of it),

.. math:: G = \frac{\partial y_c}{\partial ψ}\Big|_{ψ(x)} \in \mathbb{R}^{K \times h \times w}

with ``c = Class(x)``, and its map on another image ``x'`` is gradient × activation with that reused ``G``,

.. math:: M(x') = \mathrm{ReLU}\Big(\sum_k G^k_{ij}\, ψ^k_{ij}(x')\Big),

upsampled and min-max normalised (:func:`repint.heatmaps.spatial_maps`), exactly as RI-exact draws a
boundary's normal ``W``. RI-exact changes how RI draws a map (the full normal instead of its spatial
mean ``α_k``); this method makes the same change to Grad-CAM. Between RI-exact and Grad-CAM-exact
only the vector differs (the polytope's oriented boundary normals, or the class gradient), so a gain
of RI-exact over Grad-CAM-exact is attributable to the polytope, not to the spatial weighting.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from repint.heatmaps import spatial_maps
from repint.methods.base import InterpretationInput, Method, register
from repint.methods.gradcam import _HOOK_LOCK, _private_copy

__all__ = ["GradCAMExact", "spatial_gradient"]


def spatial_gradient(inp: InterpretationInput) -> np.ndarray:
    """``∂y_c/∂ψ`` ``[1, K, h, w]`` (float64) at the input image, ``c = inp.predicted_class``, from the
    hooks of pytorch-grad-cam's ``ActivationsAndGradients`` on ``inp.layer``.

    Thread-safe: runs on a private copy of the model, one call at a time (as Grad-CAM's weights)."""
    with _HOOK_LOCK:
        model = _private_copy(inp.model)
        x = torch.as_tensor(inp.image[None], dtype=torch.float32, device=next(model.parameters()).device)
        hooks = ActivationsAndGradients(model, [model.get_submodule(inp.layer)], reshape_transform=None)
        try:
            with torch.enable_grad():
                out = hooks(x.requires_grad_(True))
                model.zero_grad()
                ClassifierOutputTarget(int(inp.predicted_class))(out[0]).backward()
            grad = hooks.gradients[0].numpy().astype(np.float64)
        finally:
            hooks.release()
    return grad.reshape(1, *grad.shape[1:])


@register
class GradCAMExact(Method):
    """Grad-CAM with its spatial gradient tensor reused: ``{"G": [1, K, h, w]}``, drawn as
    ``ReLU(Σ_k G^k_ij ψ^k_ij(x'))`` (the module docstring). Not the paper's; a baseline (nearest centre)."""

    name = "Grad-CAM-exact"
    paper_order = None
    uses_polytope = False

    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        return {"G": spatial_gradient(inp).astype(np.float32)}

    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        return spatial_maps(interpretation["G"], features, size=images.shape[-2:])
