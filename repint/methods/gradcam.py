"""Grad-CAM (Selvaraju et al.): ``α_k`` = spatial mean of ``∂y_c / ∂ψ^k`` at the centre's input image,
computed with the ``grad-cam`` package and reused on other images."""

from __future__ import annotations

import copy
import threading
import weakref
from typing import ClassVar

import numpy as np
import torch
from pytorch_grad_cam import GradCAM as _GradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from repint.methods.base import CAMMethod, InterpretationInput, register

_HOOK_LOCK = threading.Lock()
_PRIVATE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, ...], torch.nn.Module]] = (
    weakref.WeakKeyDictionary())


def _private_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` used only under ``_HOOK_LOCK``: CAM hooks registered on it can never see,
    or be seen by, forward passes that other threads run on the shared model. The copy is renewed
    whenever a parameter or buffer of the model changed in place (training, ``load_state_dict``)."""
    version = tuple(t._version for t in (*model.parameters(), *model.buffers()))
    cached = _PRIVATE.get(model)
    if cached is None or cached[0] != version:
        cached = (version, copy.deepcopy(model).eval())
        _PRIVATE[model] = cached
    return cached[1]


def cam_weights_at_input(cam_cls: type[BaseCAM], inp: InterpretationInput) -> np.ndarray:
    """Run one of pytorch-grad-cam's CAM classes on the input image and return its channel weights.

    Thread-safe: runs on a private copy of the model, one call at a time."""
    with _HOOK_LOCK:
        return _cam_weights(cam_cls, _private_copy(inp.model), inp)


def _cam_weights(cam_cls: type[BaseCAM], model: torch.nn.Module, inp: InterpretationInput) -> np.ndarray:
    layer = model.get_submodule(inp.layer)
    x = torch.as_tensor(inp.image[None], dtype=torch.float32, device=next(model.parameters()).device)
    target = ClassifierOutputTarget(int(inp.predicted_class))
    with torch.enable_grad(), cam_cls(model=model, target_layers=[layer]) as cam:
        out = cam.activations_and_grads(x)
        model.zero_grad()
        target(out[0]).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        weights = cam.get_cam_weights(x, layer, [target], acts, grads)
    return np.asarray(weights, dtype=np.float64).reshape(1, -1)


def layer_activations(model: torch.nn.Module, layer: str, image: np.ndarray) -> np.ndarray:
    """The activations ``[K, h, w]`` of ``layer`` for one image (a hook on a private model copy)."""
    with _HOOK_LOCK:
        private = _private_copy(model)
        out: list[torch.Tensor] = []
        handle = private.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o.detach()))
        try:
            with torch.no_grad():
                private(torch.as_tensor(image[None], dtype=torch.float32, device=next(private.parameters()).device))
        finally:
            handle.remove()
    return out[0][0].cpu().numpy()


def layer_activations_batch(model: torch.nn.Module, layer: str, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """The activations ``[n, K, h, w]`` of ``layer`` for images ``[n, C, H, W]``, in batches."""
    with _HOOK_LOCK:
        private = _private_copy(model)
        out: list[torch.Tensor] = []
        handle = private.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o.detach().cpu()))
        dev = next(private.parameters()).device
        try:
            with torch.no_grad():
                for i in range(0, len(images), batch):
                    private(torch.as_tensor(images[i: i + batch], dtype=torch.float32, device=dev))
        finally:
            handle.remove()
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)


class LibraryCAM(CAMMethod):
    """A CAM method of the ``grad-cam`` package: its channel weights at the input image, reused on
    other images. A subclass names the package's class (``cam_class``)."""

    cam_class: ClassVar[type[BaseCAM]]

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        return cam_weights_at_input(self.cam_class, inp)


@register
class GradCAM(LibraryCAM):
    name, paper_order, cam_class = "Grad-CAM", 1, _GradCAM
