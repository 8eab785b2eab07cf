"""Splitting F = G ∘ ψ at a named layer and the piecewise-linearity checks on G."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from repint.model import (
    AffineHeadWarning,
    Classifier,
    LayerNotFoundError,
    NonPiecewiseLinearError,
    split_model,
)
from repint.nets import VGGNet


class TinyVGG(nn.Module):
    """conv-relu-pool, then flatten + linear-relu-linear (activation of the hidden layer swappable)."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), act or nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class AffineHeadNet(nn.Module):
    """conv-relu, then global average pool + one linear layer (a ResNet-style affine head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


class SkipNet(nn.Module):
    """A residual connection from the input across ``conv1``, ``relu`` and ``conv2``, then ``post``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.post = nn.ReLU()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        h = self.post(self.conv2(self.relu(self.conv1(x))) + x)
        return self.fc(torch.flatten(h, 1))


def images(n: int = 2, size: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, 3, size, size)


def test_split_reproduces_the_model():
    torch.manual_seed(0)
    model = TinyVGG()
    x = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AffineHeadWarning)
        sm = split_model(model, "features.1")
    assert sm.layer == "features.1"
    assert sm.affine is False  # the max-pool and the hidden ReLU are in G
    assert sm.nonlinear_override == []
    with torch.no_grad():
        psi = sm.psi(x)
        assert psi.shape == (2, 4, 8, 8)
        # ψ is the ReLU output: non-negative, and what the model's own layers compute.
        torch.testing.assert_close(psi, model.features[1](model.features[0](x)))
        torch.testing.assert_close(sm.head(psi), model(x))


def test_split_after_the_pool_is_still_piecewise_linear():
    torch.manual_seed(1)
    model = TinyVGG()
    sm = split_model(model, "features.2")
    assert sm.affine is False  # the hidden ReLU
    x = images()
    with torch.no_grad():
        assert sm.psi(x).shape == (2, 4, 4, 4)
        torch.testing.assert_close(sm.head(sm.psi(x)), model(x))


def test_unknown_layer_lists_layer_names():
    with pytest.raises(LayerNotFoundError) as err:
        split_model(TinyVGG(), "features.7")
    msg = str(err.value)
    assert "'features.7'" in msg
    for name in ("features.0", "features.1", "features.2", "classifier.1", "classifier.3"):
        assert name in msg


@pytest.mark.parametrize("act", [nn.GELU(), nn.Sigmoid()], ids=["GELU", "Sigmoid"])
def test_non_piecewise_linear_head_is_refused(act):
    name = type(act).__name__
    with pytest.raises(NonPiecewiseLinearError, match=rf"'classifier\.2' \({name}\)"):
        split_model(TinyVGG(act), "features.1")


@pytest.mark.parametrize("act", [nn.GELU(), nn.Sigmoid()], ids=["GELU", "Sigmoid"])
def test_override_runs_and_records_the_offending_op(act):
    torch.manual_seed(2)
    model = TinyVGG(act)
    # Cut after the pool: the only non-linearity left in G is the GELU/Sigmoid. It is not affine.
    with warnings.catch_warnings():
        warnings.simplefilter("error", AffineHeadWarning)
        sm = split_model(model, "features.2", allow_nonlinear_head=True)
    assert len(sm.nonlinear_override) == 1
    assert "classifier.2" in sm.nonlinear_override[0]
    assert type(act).__name__ in sm.nonlinear_override[0]
    assert sm.affine is False
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x)), model(x))


def test_affine_head_warns():
    torch.manual_seed(3)
    model = AffineHeadNet()
    with pytest.warns(AffineHeadWarning, match="affine"):
        sm = split_model(model, "relu")
    assert sm.affine is True
    x = images()
    with torch.no_grad():
        assert sm.psi(x).shape == (2, 4, 8, 8)
        torch.testing.assert_close(sm.head(sm.psi(x)), model(x))


def test_skip_connection_across_the_split_is_refused():
    with pytest.raises(ValueError, match="'relu' does not separate the network"):
        split_model(SkipNet(), "relu")
    with pytest.raises(ValueError, match="'conv2' does not separate the network: .* uses 'x'"):
        split_model(SkipNet(), "conv2")
    # Cutting after the residual sum is fine (G = flatten + fc is affine: it warns).
    torch.manual_seed(6)
    model = SkipNet()
    with pytest.warns(AffineHeadWarning):
        sm = split_model(model, "post")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x)), model(x))


def test_vggnet_psi_layer():
    torch.manual_seed(4)
    net = VGGNet(num_classes=3, in_channels=3, widths=(4, 8), image_size=16, hidden=(16, 8)).eval()
    # 2 blocks of (conv, bn, relu, conv, bn, relu, pool): ψ is the 13th layer, the ReLU before the last pool.
    assert net.psi_layer == "features.12"
    assert isinstance(net.features[12], nn.ReLU)
    assert isinstance(net.features[13], nn.MaxPool2d)
    sm = split_model(net, net.psi_layer)
    assert sm.affine is False
    x = images(3, 16)
    with torch.no_grad():
        psi = sm.psi(x)
        assert psi.shape == (3, 8, 8, 8)  # 16 -> pool -> 8; the last pool is in G
        assert (psi >= 0).all()
        torch.testing.assert_close(sm.head(psi), net(x))


def test_classifier_normalises_inside_the_model():
    clf = Classifier(nn.Identity(), mean=(0.5, 0.25), std=(0.5, 2.0))
    x = torch.tensor([[[[1.0, 0.0]], [[0.25, 0.0]]]])  # [1, 2, 1, 2]
    # channel 0: (1 - .5) / .5 = 1, (0 - .5) / .5 = -1; channel 1: (.25 - .25) / 2 = 0, -.25 / 2 = -.125
    torch.testing.assert_close(clf(x), torch.tensor([[[[1.0, -1.0]], [[0.0, -0.125]]]]))
    # The statistics are buffers: saved in the state dict, moved with the model, not trained.
    assert set(clf.state_dict()) == {"mean", "std"}
    assert list(clf.parameters()) == []


def test_split_a_classifier_wrapped_vggnet():
    torch.manual_seed(5)
    net = VGGNet(num_classes=2, widths=(4,), image_size=8, hidden=(8, 4))
    clf = Classifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    sm = split_model(clf, net.psi_layer)  # the user's own name, without the wrapper's prefix
    x = images(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x)), clf(x))
        torch.testing.assert_close(sm.psi(x), net.features[:6]((x - 0.5) / 0.25))
