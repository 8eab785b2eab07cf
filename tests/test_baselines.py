"""Grad-CAM++ and Score-CAM channel weights against their formulas, computed independently."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from repint.methods import InterpretationInput, get_method
from repint.methods.gradcam import layer_activations


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _input(model: nn.Module, target: int = 1) -> InterpretationInput:
    img = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    return InterpretationInput(model=model, layer="3", image=img, features=np.zeros((5, 6, 6)),
                               predicted_class=target)


def _acts_and_grads(model: nn.Module, img: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(img[None])
    a = model[:4](x).detach().requires_grad_(True)
    y = model[4:](a)[0, target]
    (g,) = torch.autograd.grad(y, a)
    return a[0].detach().double().numpy(), g[0].double().numpy()


def test_grad_cam_plus_plus_weights_follow_eq_19():
    model = _model()
    inp = _input(model)
    A, g = _acts_and_grads(model, inp.image, 1)
    # Eq. 19 of Chattopadhyay et al.: a = g² / (2 g² + Σ_ab A · g³), α_k = Σ_ij a · ReLU(g)
    s = A.sum(axis=(1, 2), keepdims=True)
    a = np.where(g != 0, g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-6), 0.0)
    expected = (a * np.maximum(g, 0)).sum(axis=(1, 2))
    got = get_method("Grad-CAM++").channel_weights(inp)
    assert got.shape == (1, 5)
    np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-7)
    # and it differs from Grad-CAM's plain mean of the gradients
    assert not np.allclose(got[0], g.mean(axis=(1, 2)), rtol=1e-2)


def test_score_cam_weights_are_a_softmax_over_masked_channel_scores():
    model = _model()
    inp = _input(model, target=2)
    A = layer_activations(model, "3", inp.image)
    x = torch.as_tensor(inp.image[None])
    scores = []
    for k in range(A.shape[0]):  # one pass per channel, the slow way
        m = torch.as_tensor(A[k])  # 6x6 feature map = input size: upsampling is the identity here
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        with torch.no_grad():
            scores.append(float(model(x * m)[0, 2]))
    expected = np.exp(scores - np.max(scores))
    expected /= expected.sum()
    method = get_method("Score-CAM")
    method.batch_size = 2  # several batches, one of them partial
    got = method.channel_weights(inp)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    assert got.sum() == np.float64(got.sum()) and abs(got.sum() - 1) < 1e-6


def test_score_cam_matches_the_grad_cam_package():
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model()
    inp = _input(model, target=0)
    with ScoreCAM(model, [model[3]]) as cam:
        x = torch.as_tensor(inp.image[None])
        cam.activations_and_grads(x)
        acts = cam.activations_and_grads.activations[0].numpy()
        ref = cam.get_cam_weights(x, model[3], [ClassifierOutputTarget(0)], acts, None)
    np.testing.assert_allclose(get_method("Score-CAM").channel_weights(inp), ref, rtol=1e-5)
