"""The method registry, Grad-CAM's channel weights (via the grad-cam package) and RI's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from repint.heatmaps import boundary_channel_weights
from repint.methods import CAMMethod, InterpretationInput, available_methods, get_method
from repint.methods.gradcam import GradCAM
from repint.methods.ri import RI


def test_registry():
    assert {"RI", "Grad-CAM"} <= set(available_methods())
    ri, gc = get_method("RI"), get_method("Grad-CAM")
    assert isinstance(ri, RI) and ri.name == "RI"
    assert isinstance(gc, GradCAM) and gc.name == "Grad-CAM"
    assert isinstance(ri, CAMMethod) and isinstance(gc, CAMMethod)
    # A fresh instance per call.
    assert get_method("RI") is not ri
    with pytest.raises(ValueError, match="Unknown method 'Nope-CAM'") as err:
        get_method("Nope-CAM")
    assert "RI" in str(err.value) and "Grad-CAM" in str(err.value)


class LinearHeadNet(nn.Module):
    """ψ = ReLU(1x1 conv) with 2 channels of 2 x 2; G = flatten + one linear layer set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features[0].bias.copy_(torch.tensor([0.5, 0.5]))
            self.fc.weight.copy_(torch.tensor([
                [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
                [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.0, -3.0],
                [4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0],
            ]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def test_gradcam_weights_hand_computed_on_a_linear_head():
    # ∂y_c/∂ψ = the class-c row of fc, laid out as [channel, 2, 2]; Grad-CAM's α_k is its spatial mean.
    #   class 1: channel 0 (1, 2, 3, 4) -> 2.5, channel 1 (-1, 0, 0, -3) -> -1
    #   class 2: channel 0 (4, 4, 0, 0) -> 2,   channel 1 (0, 0, 0, 8)   -> 2
    # (independent of the image, and of which class the model predicts).
    model = LinearHeadNet().eval()
    image = np.array([[[0.2, 0.4], [0.6, 0.8]]], dtype=np.float32)
    gc = get_method("Grad-CAM")
    for cls, expected in [(1, [[2.5, -1.0]]), (2, [[2.0, 2.0]])]:
        inp = InterpretationInput(model=model, layer="features.1", image=image, features=np.zeros((2, 2, 2)),
                                  predicted_class=cls)
        np.testing.assert_allclose(gc.channel_weights(inp), expected, atol=1e-6)
        out = gc.interpret(inp)
        assert out["channel_weights"].dtype == np.float32
        np.testing.assert_allclose(out["channel_weights"], expected, atol=1e-6)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                                      nn.ReLU())
        self.classifier = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 4 * 4, 6), nn.ReLU(),
                                        nn.Linear(6, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_gradcam_weights_match_autograd():
    torch.manual_seed(0)
    model = SmallNet().eval()
    image = torch.rand(3, 8, 8)
    # Independently: ψ as a leaf, gradient of the class logit, spatial mean per channel.
    psi = model.features(image[None]).detach().requires_grad_(True)
    logits = model.classifier(psi)
    gc = get_method("Grad-CAM")
    for cls in range(3):
        (grad,) = torch.autograd.grad(logits[0, cls], psi, retain_graph=True)
        expected = grad.mean(dim=(2, 3)).numpy()  # [1, 5]
        assert np.abs(expected).max() > 0  # a non-trivial check
        inp = InterpretationInput(model=model, layer="features.3", image=image.numpy(),
                                  features=psi[0].detach().numpy(), predicted_class=cls)
        w = gc.channel_weights(inp)
        assert w.shape == (1, 5)
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-7)


# The boundaries of test_heatmaps: α = [[-2.5, 1], [1, 2]] oriented, [[2.5, -1], [1, 2]] raw.
W = np.array([
    [[[1, 2], [3, 4]], [[-1, -1], [1, -3]]],
    [[[0, 0], [0, 4]], [[2, 2], [2, 2]]],
], dtype=np.float32).reshape(2, -1)
B = np.array([1.0, -1.0])
PSI_X = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], dtype=np.float32)


def ri_input(orient: bool = True, W=W, B=B) -> InterpretationInput:
    return InterpretationInput(model=nn.Identity(), layer="", image=np.zeros((1, 4, 4), np.float32),
                               features=PSI_X, predicted_class=0, boundaries_W=W, boundaries_b=B, orient=orient)


def test_ri_channel_weights():
    ri = get_method("RI")
    np.testing.assert_allclose(ri.channel_weights(ri_input()), [[-2.5, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(ri.channel_weights(ri_input()), boundary_channel_weights(W, B, PSI_X))
    np.testing.assert_allclose(ri.channel_weights(ri_input(orient=False)), [[2.5, -1.0], [1.0, 2.0]])
    out = ri.interpret(ri_input())
    assert out["channel_weights"].dtype == np.float32 and out["channel_weights"].shape == (2, 2)


def test_ri_without_boundaries():
    ri = get_method("RI")
    # An empty polytope (nothing to exclude): one all-zero row, hence an all-zero map.
    w = ri.channel_weights(ri_input(W=np.zeros((0, 8), np.float32), B=np.zeros(0)))
    assert w.tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="needs the polytope"):
        ri.channel_weights(ri_input(W=None))


def test_cam_method_heatmaps_and_keep_masks():
    # α = [[-2.5, 1], [1, 2]] on ψ(x) itself:
    #   boundary 0: ReLU(-2.5 ch0 + ch1) = ReLU([[-2.5, 0], [0, 1]]) = [[0, 0], [0, 1]] (normalised as is)
    #   boundary 1: ch0 + 2 ch1 = [[1, 0], [0, 2]] -> [[.5, 0], [0, 1]]
    #   mean [[.25, 0], [0, 1]]; at 2 x 2 (no interpolation), k = round(0.8) = 1 -> pixel (1, 1).
    ri = get_method("RI")
    interp = ri.interpret(ri_input())
    imgs = np.zeros((1, 3, 2, 2), np.float32)
    maps = ri.heatmaps(interp, imgs, PSI_X[None])
    np.testing.assert_allclose(maps[0], [[0.25, 0.0], [0.0, 1.0]], atol=1e-6)
    keep = ri.keep_masks(interp, imgs, PSI_X[None])
    assert keep[0].tolist() == [[False, False], [False, True]]
    # Upsampled to the images' size: 4 x 4 maps, k = round(3.2) = 3 pixels kept.
    big = ri.keep_masks(interp, np.zeros((1, 3, 4, 4), np.float32), PSI_X[None])
    assert big.shape == (1, 4, 4) and big.sum() == 3
    assert big[0, 3, 3]


def test_gradcam_exact_reuses_the_spatial_gradient_hand_computed_on_a_linear_head():
    # ∂y_c/∂ψ = the class-c row of fc laid out as [channel, 2, 2] (independent of the image):
    #   class 1: G0 = [[1, 2], [3, 4]], G1 = [[-1, 0], [0, -3]]
    #   class 2: G0 = [[4, 4], [0, 0]], G1 = [[0, 0], [0, 8]]
    # The map on x' is ReLU(Σ_k G^k ψ^k(x')) min-max normalised (2 x 2 images: no interpolation):
    #   class 1, ψ0 = [[1, 0], [1, 1]], ψ1 = [[1, 1], [0, 1]]: [[1 - 1, 0], [3, 4 - 3]] = [[0, 0], [3, 1]]
    #            -> [[0, 0], [1, 1/3]]
    #   class 2, ψ0 = [[.5, 1], [2, 0]], ψ1 = [[0, 0], [1, .25]]: [[2, 4], [0, 2]] -> [[.5, 1], [0, .5]]
    from repint.methods import paper_methods
    from repint.methods.gradcam_exact import GradCAMExact

    method = get_method("Grad-CAM-exact")
    assert isinstance(method, GradCAMExact) and not method.uses_polytope and method.paper_order is None
    assert "Grad-CAM-exact" not in paper_methods()
    model = LinearHeadNet().eval()
    image = np.array([[[0.2, 0.4], [0.6, 0.8]]], dtype=np.float32)
    fc = model.fc.weight.detach().numpy()
    cases = [(1, [[[1, 0], [1, 1]], [[1, 1], [0, 1]]], [[0, 0], [1, 1 / 3]]),
             (2, [[[0.5, 1], [2, 0]], [[0, 0], [1, 0.25]]], [[0.5, 1], [0, 0.5]])]
    for cls, psi, expected in cases:
        inp = InterpretationInput(model=model, layer="features.1", image=image, features=np.zeros((2, 2, 2)),
                                  predicted_class=cls)
        out = method.interpret(inp)
        assert set(out) == {"G"} and out["G"].dtype == np.float32 and out["G"].shape == (1, 2, 2, 2)
        np.testing.assert_allclose(out["G"][0], fc[cls].reshape(2, 2, 2), atol=1e-6)
        maps = method.heatmaps(out, np.zeros((1, 1, 2, 2), np.float32), np.array([psi], np.float32))
        np.testing.assert_allclose(maps[0], expected, atol=1e-6)
        # the same drawing as RI-exact with G as its (single) boundary normal
        ri_exact = get_method("RI-exact").heatmaps({"W": out["G"]}, np.zeros((1, 1, 2, 2)), np.array([psi]))
        np.testing.assert_allclose(maps, ri_exact, atol=1e-6)


def test_gradcam_exact_gradient_matches_autograd():
    torch.manual_seed(0)
    model = SmallNet().eval()
    image = torch.rand(3, 8, 8)
    psi = model.features(image[None]).detach().requires_grad_(True)
    logits = model.classifier(psi)
    method = get_method("Grad-CAM-exact")
    for cls in range(3):
        (grad,) = torch.autograd.grad(logits[0, cls], psi, retain_graph=True)
        inp = InterpretationInput(model=model, layer="features.3", image=image.numpy(),
                                  features=psi[0].detach().numpy(), predicted_class=cls)
        G = method.interpret(inp)["G"]
        assert G.shape == (1, 5, 8, 8) and np.abs(G).max() > 0
        np.testing.assert_allclose(G, grad.numpy(), rtol=1e-5, atol=1e-7)
