"""The split F = G ∘ ψ on models written as people write them: functional activations, reused in-place
ReLUs, sums and concatenations, modules called twice, nested Sequentials, every flatten and pooling
style; cuts at graph nodes; cuts inside residual blocks refused; the layer analysis and its
recommendation on hand-built networks."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from repint.graph import CutError
from repint.layers import LayerChoiceError, analyse_layers, distinct_boundaries, recommend
from repint.model import NonPiecewiseLinearError, split_model
from repint.nets import VGGNet

ACTS = ["F.relu", "torch.relu", "method", "inplace-module"]
MERGES = ["+", "torch.add", "add_", "cat"]


class Block(nn.Module):
    """conv-bn-act-conv-bn, merged with the block's input (a residual sum, or a DenseNet-style concatenation
    followed by a 1x1 convolution), then the activation; ``inplace-module`` reuses one ``nn.ReLU(inplace=True)``."""

    def __init__(self, c: int, act: str, merge: str) -> None:
        super().__init__()
        self.act, self.merge = act, merge
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.fuse = nn.Conv2d(2 * c, c, 1) if merge == "cat" else nn.Identity()

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return {"F.relu": F.relu, "torch.relu": torch.relu, "method": lambda t: t.relu(),
                "inplace-module": self.relu}[self.act](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.activation(self.bn1(self.conv1(x)))))
        if self.merge == "+":
            out = out + x
        elif self.merge == "torch.add":
            out = torch.add(out, x)
        elif self.merge == "add_":
            out = out.add_(x)
        else:
            out = self.fuse(torch.cat([out, x], 1))
        return self.activation(out)


class StyleNet(nn.Module):
    """stem, nested Sequential of blocks, a shared block called twice, pooling, flattening, dropout, head."""

    def __init__(self, act: str, merge: str, flatten: str = "view", pool: str = "adaptive", c: int = 4) -> None:
        super().__init__()
        self.flatten, self.pool = flatten, pool
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c, act, merge), nn.Sequential(Block(c, act, merge)))
        self.twice = Block(c, act, merge)
        self.drop = nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(c * 4, 8), nn.Linear(8, 3)
        self.nn_flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.twice(self.twice(self.blocks(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 2) if self.pool == "adaptive" else F.avg_pool2d(x, 4)
        x = {"view": lambda t: t.view(t.size(0), -1), "reshape": lambda t: t.reshape(t.shape[0], -1),
             "flatten": lambda t: torch.flatten(t, 1), "nn.Flatten": self.nn_flatten}[self.flatten](x)
        return self.fc2(F.relu(self.drop(self.fc1(x))))


def _net(*styles: str, seed: int = 0) -> StyleNet:
    torch.manual_seed(seed)
    net = StyleNet(*styles)
    for m in net.modules():  # batch-norm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _images(n: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hooked(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """What module ``name`` really returns (its last call), by a forward hook: the ground truth for ψ."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[-1]


STYLES = [(a, m, f, p) for (a, m), f, p in zip(itertools.product(ACTS, MERGES),
                                                itertools.cycle(["view", "reshape", "flatten", "nn.Flatten"]),
                                                itertools.cycle(["adaptive", "adaptive", "functional"]))]


@pytest.mark.parametrize("act, merge, flatten, pool", STYLES, ids=["-".join(s) for s in STYLES])
@pytest.mark.parametrize("layer", ["blocks.0", "blocks.1", "blocks", "twice", "stem"])
def test_every_block_boundary_splits_and_psi_is_the_modules_output(act, merge, flatten, pool, layer):
    net, x = _net(act, merge, flatten, pool), _images()
    with torch.no_grad():
        want = net(x)
    sm = split_model(net, layer, example=x)
    assert sm.max_error is not None and sm.max_error <= 1e-5
    with torch.no_grad():
        psi = sm.psi(x)
        torch.testing.assert_close(psi, _hooked(net, layer, x), rtol=0, atol=0)  # the true output, functional act
        torch.testing.assert_close(sm.head(psi.clone()), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sm.composed(x), want, rtol=1e-5, atol=1e-5)
    assert sm.affine is False  # the blocks after it (or the hidden ReLU) are in G


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("inner", ["blocks.0.conv1", "blocks.0.bn2", "blocks.1.0.conv2", "twice.bn1"])
def test_a_cut_inside_a_residual_block_is_refused_with_the_reason(merge, inner):
    with pytest.raises(CutError, match=rf"Layer '{inner}' does not separate the network: the part after it also "
                                       r"uses '[\w.]+'.*a skip connection"):
        split_model(_net("F.relu", merge), inner)


def test_a_graph_node_that_is_no_modules_output_is_a_cut():
    net, x = _net("F.relu", "+"), _images()
    # the pre-activation sum of the last call of `twice`: a tensor no module returns
    reports = {r.name: r for r in analyse_layers(net, x)}
    sums = [r for r in reports.values() if not r.module and r.name.startswith("add") and r.separates]
    assert sums, sorted(reports)
    last = max(sums, key=lambda r: r.position)
    sm = split_model(net, last.name, example=x)
    with torch.no_grad():
        twice = net.twice
        h = net.twice(net.blocks(net.stem(x)))
        pre = twice.bn2(twice.conv2(F.relu(twice.bn1(twice.conv1(h))))) + h
        torch.testing.assert_close(sm.psi(x), pre, rtol=1e-6, atol=1e-6)
    assert sm.names == [last.name]


def test_a_module_called_twice_outputs_its_last_call():
    net, x = _net("inplace-module", "+"), _images()
    sm = split_model(net, "twice", example=x)
    with torch.no_grad():
        once = net.twice(net.blocks(net.stem(x)))
        torch.testing.assert_close(sm.psi(x), net.twice(once))
    # the reused in-place ReLU: its last call is the block's output, so both names cut at the same tensor
    assert split_model(net, "twice.relu").names == sm.names == ["twice", "twice.relu"]


def test_an_inplace_op_after_the_cut_does_not_overwrite_psi():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    sm = split_model(net, "0", example=_images())
    psi = sm.psi(_images())
    before = psi.clone()
    with torch.no_grad():
        sm.head(psi)
    torch.testing.assert_close(psi, before, rtol=0, atol=0)  # ψ still has its negative values
    assert (before < 0).any()


def test_dropout_and_batch_norm_in_eval_are_linear_and_gelu_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(144, 6),
                        nn.GELU(), nn.Linear(6, 2)).eval()
    with pytest.raises(NonPiecewiseLinearError, match=r"module '5' \(GELU\)"):
        split_model(net, "0")
    with pytest.warns(UserWarning, match="affine"):
        sm = split_model(net, "5", example=_images())
    assert sm.affine


# ------------------------------------------------------------------------- hand-computed layer analysis
class TwoD(nn.Module):
    """x -> fc1 (identity) -> ReLU -> fc2 (identity): logits = relu(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.weight.copy_(torch.eye(2))
                fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def test_boundaries_counted_by_hand():
    # ΔG = max1 - max2 of relu(t): at (2, 1) it is t1 - t2 (W = (1, -1)); at (3, -1) it is t1 - 0 (W = (1, 0));
    # (5, 2) lies in the first region again: 2 distinct boundaries over the three points
    points = torch.tensor([[2.0, 1.0], [3.0, -1.0], [5.0, 2.0]])
    reports = {r.name: r for r in analyse_layers(TwoD().eval(), points)}
    fc1, relu = reports["fc1"], reports["relu"]
    assert fc1.separates and fc1.piecewise_linear and not fc1.affine
    assert relu.affine and relu.reason.startswith("G is affine")
    assert fc1.distinct_boundaries is None  # ψ is not a spatial map: not counted, not recommendable
    from repint.layers import _boundaries
    from repint.model import split_model as split

    W, b = _boundaries(split(TwoD(), "fc1").head, points)
    np.testing.assert_allclose(W, [[1, -1], [1, 0], [1, -1]])
    np.testing.assert_allclose(b, [0, 0, 0])
    assert distinct_boundaries(W, b) == 2
    with pytest.raises(LayerChoiceError, match="spatial"):
        recommend(TwoD(), points)


def test_distinct_boundaries_tolerates_rounding_not_different_planes():
    W = np.array([[1.0, 2.0], [1.0 + 1e-7, 2.0], [1.0, 2.0], [2.0, 4.0]])
    assert distinct_boundaries(W, np.array([0.5, 0.5, 0.6, 1.0])) == 3  # b differs; the scaled copy is another row


def test_recommendation_on_the_projects_vgg_is_its_psi_layer():
    torch.manual_seed(4)
    net = VGGNet(num_classes=3, widths=(4, 8), image_size=16, hidden=(16, 8)).eval()
    best = recommend(net, _images(8, 16))
    assert best.name == net.psi_layer  # the ReLU before the last max-pool: the pool's output is passed over
    assert best.recommended and best.distinct_boundaries and best.distinct_boundaries > 1


# ------------------------------------------------------------------------------- hypothesis property
@settings(max_examples=12, deadline=None)
@given(acts=st.lists(st.sampled_from(ACTS), min_size=1, max_size=3),
       merge=st.sampled_from(MERGES), seed=st.integers(0, 10))
def test_the_fast_separation_test_agrees_with_the_split(acts, merge, seed):
    """Every candidate the analysis says separates splits and reproduces F; every other one is refused."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *[Block(4, a, merge) for a in acts],
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = _images(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in analyse_layers(net, x, boundaries=False):
            if r.separates:
                assert split_model(net, r.name, example=x).max_error <= 1e-5
            else:
                with pytest.raises(CutError):
                    split_model(net, r.name)


# ------------------------------------------------------- shapes, products, log-softmax, batch statistics
class ShapeNet(nn.Module):
    """The batch size taken at the top of forward, a hand-written global average pool, a final log-softmax."""

    def __init__(self, head: str = "plain") -> None:
        super().__init__()
        self.head = head
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        h = F.relu(self.c2(F.relu(self.c1(x))))
        if self.head == "square":
            h = h * h
        elif self.head == "reciprocal":
            h = 2 / (h + 1)
        pooled = h.sum((2, 3)) / (h.size(2) * h.shape[3])
        return F.log_softmax(self.fc2(F.relu(self.fc1(pooled.view(n, -1)))), dim=1)


def test_shapes_are_constants_and_a_final_log_softmax_keeps_the_boundaries():
    torch.manual_seed(0)
    net, x = ShapeNet().eval(), _images()
    sm = split_model(net, "c2", example=x)  # x.size(0) was taken before the cut: the head reads it off ψ
    assert sm.max_error <= 1e-5 and not sm.affine
    with torch.no_grad():
        torch.testing.assert_close(sm.head(sm.psi(x[:1])), net(x[:1]))  # another batch size
    reports = {r.name: r for r in analyse_layers(net, _images(8))}
    assert reports["relu_1"].piecewise_linear and not reports["relu_1"].affine  # the log-softmax is no obstacle
    assert reports["log_softmax"].affine and reports["truediv"].piecewise_linear  # sum / (H * W): linear


@pytest.mark.parametrize("head, op", [("square", "mul"), ("reciprocal", "truediv")])
def test_products_and_reciprocals_of_psi_are_refused(head, op):
    with pytest.raises(NonPiecewiseLinearError, match=rf"function '{op}'"):
        split_model(ShapeNet(head).eval(), "c1")


def test_batch_norm_without_running_statistics_is_not_linear():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                        nn.Linear(144, 2)).eval()
    with pytest.raises(NonPiecewiseLinearError, match=r"module '1' \(BatchNorm2d\)"):
        split_model(net, "0")


def test_the_analysis_sees_psi_before_a_later_in_place_op():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    x = _images()
    reports = {r.name: r for r in analyse_layers(net, x)}
    sm = split_model(net, "0", example=x)
    with torch.no_grad():
        psi = sm.psi(x)
    from repint.layers import _boundaries

    W, b = _boundaries(sm.head, psi)  # at the true ψ (negative values intact)
    assert (psi < 0).any() and reports["0"].distinct_boundaries == distinct_boundaries(W, b)


def test_a_model_returning_a_tuple_is_one_clear_error():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.c(x).flatten(1)
            return h, h

    with pytest.raises(ValueError, match="Two returns a tuple, not a tensor of logits"):
        analyse_layers(Two(), _images())


def test_dropout_after_a_pool_counts_as_pooled():
    # pytorch/examples' MNIST net: conv-relu-conv-relu-max_pool-dropout-flatten-fc-relu-dropout-fc-log_softmax
    class Mnist(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, 1), nn.Conv2d(4, 8, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(8 * 5 * 5, 16), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            x = torch.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
            return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)

    torch.manual_seed(0)
    x = torch.rand(8, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    reports = {r.name: r for r in analyse_layers(Mnist().eval(), x)}
    assert reports["dropout1"].pool and reports["max_pool2d"].pool and not reports["relu_1"].pool
    assert recommend(Mnist().eval(), x).name == "relu_1"


class Collide(nn.Module):
    """A top-level F.relu beside a module called `relu`, a module called twice, a final nn.LogSoftmax."""

    def __init__(self, final: str = "module") -> None:
        super().__init__()
        self.final = final
        self.conv, self.shared = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc1, self.relu, self.fc2 = nn.Linear(4 * 16, 8), nn.ReLU(), nn.Linear(8, 3)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.shared(F.relu(self.shared(F.relu(self.conv(x))))), 2)
        logits = self.fc2(self.relu(self.fc1(h.flatten(1))))
        return self.log_softmax(logits) if self.final == "module" else F.log_softmax(logits)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("final", ["module", "F.log_softmax without dim"])
def test_every_listed_name_cuts_at_the_tensor_that_was_analysed(final):
    from repint.layers import _KeepAll

    torch.manual_seed(0)
    net, x = Collide(final).eval(), _images(4)
    reports = analyse_layers(net, x)
    names = [r.name for r in reports]
    assert len(names) == len(set(names))  # one name, one tensor
    assert "relu_op" in names and "shared_call" in names  # renamed: `relu` and `shared` are modules' outputs
    from repint.model import traced

    run = _KeepAll(traced(net).gm)
    with torch.no_grad():
        run.run(x)
    values = {n.name: v for n, v in run.values.items()}
    for r in reports:
        assert r.separates and r.piecewise_linear, (r.name, r.reason)  # the log-softmax is no obstacle
        sm = split_model(net, r.name, example=x, warn_affine=False)
        with torch.no_grad():
            torch.testing.assert_close(sm.psi(x), values[r.node], rtol=0, atol=0)


def test_images_the_model_cannot_take_are_one_line():
    from repint.layers import analyse_layers as analyse

    with pytest.raises(ValueError, match=r"Collide does not run on 3x12x12 images \(.*\): set data.image_size"):
        analyse(Collide().eval(), torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match=r"does not run on 1x8x8 images"):
        split_model(Collide().eval(), "conv", example=torch.rand(2, 1, 8, 8))
