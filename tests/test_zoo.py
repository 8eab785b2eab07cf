"""The torchvision zoo as a test matrix: every classification model of
``torchvision.models.list_models(module=torchvision.models)``, random weights, small random images,
either gets a recommended cut whose head is piecewise linear and not affine and reproduces the logits,
or a one-line refusal naming the op that is not piecewise linear (docs/models.md has the table)."""

from __future__ import annotations

import re

import pytest

from repint.zoo import try_model, zoo_models

# families whose ops are all piecewise linear (ReLU/ReLU6, max/avg pools, sums, concatenations, shuffles)
CUT = ("alexnet", "vgg", "resnet", "resnext", "wide_resnet", "densenet", "googlenet", "inception", "mnasnet",
       "mobilenet_v2", "regnet", "shufflenet", "squeezenet")  # regnet_y: at the last block's sum, after its gate
# and those with an op that is not: LayerNorm, GELU, SiLU, Hardswish, sigmoid gates, tanh, attention
REFUSED = {"convnext": "LayerNorm|layer_norm", "efficientnet": "SiLU", "maxvit": "Tanh", "mobilenet_v3": "Hardswish",
           "swin": "LayerNorm", "vit_": "LayerNorm"}
# random initialisation of these takes the most time (100M+ parameters): still run, marked slow
HEAVY = ("vit_h_14", "vit_l", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "efficientnet_b7",
         "efficientnet_v2_l", "convnext_large", "swin_v2_b", "swin_b", "resnext101_64x4d", "resnext101_32x8d",
         "wide_resnet101_2", "regnet_y_16gf", "regnet_x_16gf", "maxvit_t")


def _params() -> list:
    return [pytest.param(m, marks=pytest.mark.slow) if m.startswith(HEAVY) else m for m in zoo_models()]


@pytest.mark.parametrize("name", _params())
def test_every_torchvision_classifier_is_cut_or_refused_in_one_line(name):
    r = try_model(name)
    if name.startswith(CUT):
        assert r.refusal is None, r.refusal
        assert r.layer and r.shape and len(r.shape) == 3 and min(r.shape[1:]) >= 2
        assert r.boundaries is not None and r.boundaries > 1
        assert r.max_error is not None and r.max_error <= 1e-5  # G(ψ(x)) == F(x)
    else:
        family = next(f for f in REFUSED if name.startswith(f))  # a new family fails here: add it to CUT or REFUSED
        assert r.layer is None and r.refusal and "\n" not in r.refusal
        assert re.search(REFUSED[family], r.refusal), r.refusal
