"""torchvision architectures through the same split: an affine head is warned about, a cut inside a
residual block is refused, and VGG's head is piecewise linear."""

from __future__ import annotations

import pytest
import torch

from repint.model import AffineHeadWarning, split_model
from repint.nets import build_model


def test_resnet_head_is_affine_and_warned():
    net = build_model("resnet18", num_classes=3, image_size=32).eval()
    with pytest.warns(AffineHeadWarning, match="affine"):
        sm = split_model(net, "layer4")
    assert sm.affine
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x)), net(x))


def test_cut_inside_a_residual_block_is_refused():
    net = build_model("resnet18", num_classes=3, image_size=32).eval()
    with pytest.raises(ValueError, match="does not separate the network"):
        split_model(net, "layer4.1.conv1")


def test_torchvision_vgg_splits_with_a_piecewise_linear_head():
    net = build_model("vgg11", num_classes=2, image_size=32).eval()
    sm = split_model(net, "features.18")  # the ReLU after the last convolution
    assert not sm.affine
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x)), net(x), rtol=1e-4, atol=1e-5)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown architecture 'vgg-huge'"):
        build_model("vgg-huge", num_classes=2, image_size=32)
