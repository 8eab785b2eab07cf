r"""Score-CAM (Wang et al. 2020): each channel's activation, upsampled to the input and min-max
normalised, masks the input image; the class score ``s_k`` of each masked image gives

.. math:: α = \mathrm{softmax}_k(s_k)

(the ``grad-cam`` package's definition, scores on logits). The channel passes run in batches of
``batch_size`` masked images, not one forward pass per channel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from repint.methods.base import CAMMethod, InterpretationInput, register


def score_cam_weights(model: torch.nn.Module, image: np.ndarray, activations: np.ndarray, target: int,
                      batch_size: int = 64) -> np.ndarray:
    """``α`` ``[1, K]`` for one image ``[C, H, W]`` and its activations ``[K, h, w]`` at the layer."""
    dev = next(model.parameters()).device
    x = torch.as_tensor(image, dtype=torch.float32, device=dev)[None]
    act = torch.as_tensor(activations, dtype=torch.float32, device=dev)[None]
    up = F.interpolate(act, size=x.shape[-2:], mode="bilinear", align_corners=True)[0]  # [K, H, W]
    flat = up.reshape(len(up), -1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    up = (up - lo) / (hi - lo + 1e-8)
    scores = []
    with torch.no_grad():
        for i in range(0, len(up), batch_size):
            scores.append(model(x * up[i: i + batch_size, None])[:, target])
    return torch.softmax(torch.cat(scores), dim=0).cpu().numpy()[None].astype(np.float64)


@register
class ScoreCAM(CAMMethod):
    name = "Score-CAM"
    paper_order = 3
    batch_size = 64

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        from repint.methods.gradcam import layer_activations

        acts = layer_activations(inp.model, inp.layer, inp.image)
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, self.batch_size)
