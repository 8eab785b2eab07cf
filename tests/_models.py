"""Models for tests, loaded through the `module:function` hook (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import torch
from torch import nn

from repint.nets import VGGNet


def one_class_net(num_classes: int) -> nn.Module:
    """A VGG-style net that predicts class 0 for every image (its last layer's bias decides)."""
    net = VGGNet(num_classes=num_classes, image_size=32)
    last = net.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1.0)
        last.bias[0] = 1.0
    return net


def gelu_head_net(num_classes: int) -> nn.Module:
    """A net whose head has a GELU: not piecewise linear."""
    net = VGGNet(num_classes=num_classes, image_size=32)
    net.classifier[2] = nn.GELU()
    return net
