"""Grad-CAM (Selvaraju et al.): ``α_k`` = spatial mean of ``∂y_c / ∂ψ^k`` at the centre's input image,
computed with the ``grad-cam`` package and reused on other images."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM as _GradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from repint.methods.base import CAMMethod, InterpretationInput, register


def cam_weights_at_input(cam_cls: type[BaseCAM], inp: InterpretationInput) -> np.ndarray:
    """Run one of pytorch-grad-cam's CAM classes on the input image and return its channel weights."""
    layer = inp.model.get_submodule(inp.layer)
    x = torch.as_tensor(inp.image[None], dtype=torch.float32)
    target = ClassifierOutputTarget(int(inp.predicted_class))
    with torch.enable_grad(), cam_cls(model=inp.model, target_layers=[layer]) as cam:
        out = cam.activations_and_grads(x)
        inp.model.zero_grad()
        target(out[0]).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        weights = cam.get_cam_weights(x, layer, [target], acts, grads)
    return np.asarray(weights, dtype=np.float64).reshape(1, -1)


@register
class GradCAM(CAMMethod):
    name = "Grad-CAM"

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        return cam_weights_at_input(_GradCAM, inp)
