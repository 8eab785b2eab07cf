"""Split a classifier ``F = G ∘ ψ`` at a named layer and check that ``G`` is piecewise linear.

``ψ`` is the output of the named layer; ``G`` is everything after it. RI's theory holds only when
``G`` is piecewise linear (ReLU family, max/avg pooling, linear, batch-norm in eval mode, dropout in
eval mode, reshapes); anything else is refused unless explicitly overridden.
"""

from __future__ import annotations

import operator
import threading
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AffineHeadWarning",
    "Classifier",
    "LayerNotFoundError",
    "NonPiecewiseLinearError",
    "SplitModel",
    "split_model",
]


class LayerNotFoundError(ValueError):
    """The layer named as ψ does not exist in the model."""


class NonPiecewiseLinearError(ValueError):
    """The head G contains an operation that is not piecewise linear."""


class AffineHeadWarning(UserWarning):
    """G is affine: it has a single linear region, so every boundary is the same and RI collapses."""


class Classifier(nn.Module):
    """A network taking images in pixel space ``[0, 1]``, normalising them first.

    Masking in the evaluation sets pixels to 0 *in pixel space*; keeping the normalisation inside
    the model makes that exact for every architecture.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


_PL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.RReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Identity, nn.Unflatten,
)
_NONLINEAR_PL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.RReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_PL_FUNCTIONS = {
    torch.flatten, torch.relu, F.relu, F.leaky_relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.dropout, F.linear, torch.cat, torch.reshape, operator.add, operator.sub,
    operator.neg, operator.getitem, getattr, torch.max, torch.maximum,
}
_NONLINEAR_PL_FUNCTIONS = {torch.relu, F.relu, F.leaky_relu, F.max_pool2d, F.adaptive_max_pool2d,
                           torch.max, torch.maximum}
_PL_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "permute", "transpose", "squeeze",
               "unsqueeze", "relu", "clamp_min", "add", "sub", "neg", "max", "mean", "sum"}
_NONLINEAR_PL_METHODS = {"relu", "clamp_min", "max"}


@dataclass
class SplitModel:
    """``model`` split at ``layer`` into ``psi`` (input -> ψ) and ``head`` (ψ -> logits, i.e. G)."""

    model: nn.Module
    layer: str
    psi: fx.GraphModule
    head: fx.GraphModule
    affine: bool
    nonlinear_override: list[str] = field(default_factory=list)


# torch.fx patches ``nn.Module.__call__`` for the whole process while it traces: a forward pass that
# another thread runs meanwhile is recorded into the trace and fails ("module is not installed as a
# submodule"). Traces therefore take this lock, and the callers that run in threads (the tasks'
# model cache, ACE's split) trace once under it before their first forward pass.
TRACE_LOCK = threading.RLock()


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        with TRACE_LOCK:
            return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
        raise ValueError(
            f"Cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). RepInt needs "
            "a model whose forward has no data-dependent control flow; wrap it in a `module:function` "
            "hook that returns a traceable nn.Module."
        ) from exc


def _layer_output_node(gm: fx.GraphModule, layer: str) -> fx.Node:
    nodes = [n for n in gm.graph.nodes if n.op == "call_module"
             and (n.target == layer or str(n.target).startswith(layer + "."))]
    if not nodes:
        raise LayerNotFoundError(f"Layer {layer!r} is not called in the model's forward pass.")
    return nodes[-1]


def _ancestors_of_input(graph: fx.Graph, stop: fx.Node) -> set[fx.Node]:
    """Nodes that depend on the model input without going through ``stop``."""
    dep: set[fx.Node] = set()
    for n in graph.nodes:
        if n is stop:
            continue
        if n.op == "placeholder" or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def _check_op(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[bool, bool]:
    """Return (is piecewise linear, is a non-linear piece) for one head node."""
    if node.op == "call_module":
        mod = modules[str(node.target)]
        return isinstance(mod, _PL_MODULES), isinstance(mod, _NONLINEAR_PL_MODULES)
    if node.op == "call_function":
        return node.target in _PL_FUNCTIONS, node.target in _NONLINEAR_PL_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PL_METHODS, node.target in _NONLINEAR_PL_METHODS
    return True, False


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[str(node.target)]).__name__})"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.op.replace('call_', '')} {name!r} (graph node {node.name!r})"


def split_model(model: nn.Module, layer: str, *, allow_nonlinear_head: bool = False) -> SplitModel:
    """Split ``model`` at ``layer`` into ``ψ`` and ``G`` with ``G(ψ(x)) == model(x)``.

    Raises :class:`LayerNotFoundError` listing the model's layers when ``layer`` is unknown,
    :class:`NonPiecewiseLinearError` naming the offending module when ``G`` is not piecewise
    linear (unless ``allow_nonlinear_head``), and warns :class:`AffineHeadWarning` when ``G`` is
    affine.
    """
    model = model.eval()
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise LayerNotFoundError(
            f"Layer {layer!r} does not exist in {type(model).__name__}. Its layers are: {', '.join(names)}. "
            "Name the layer whose output is ψ (for VGG-style nets: the ReLU after the last convolution)."
        )
    gm = _trace(model)
    modules = dict(gm.named_modules())
    target = _layer_output_node(gm, layer)
    order = list(gm.graph.nodes)
    pos = order.index(target)
    input_dep = _ancestors_of_input(gm.graph, target)

    # psi: the graph up to the target node.
    psi_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in order[: pos + 1]:
        env[n] = psi_graph.node_copy(n, lambda a: env[a])
    psi_graph.output(env[target])
    psi = fx.GraphModule(gm, psi_graph)

    # head: placeholder t, then every node after the target (and constants it needs).
    head_graph = fx.Graph()
    henv: dict[fx.Node, fx.Node] = {target: head_graph.placeholder("t")}
    output_node = next(n for n in order if n.op == "output")

    def arg(a: fx.Node) -> fx.Node:
        if a in henv:
            return henv[a]
        if a in input_dep:
            raise ValueError(
                f"Layer {layer!r} does not separate the network: the part after it also uses "
                f"{a.name!r}, computed before it (a skip connection?). Choose a layer that every path "
                "to the output goes through."
            )
        henv[a] = head_graph.node_copy(a, arg)  # a constant (get_attr) defined before the layer
        return henv[a]

    nonlinear, offending = False, []
    for n in order[pos + 1:]:
        if n.op == "output":
            break
        ok, nl = _check_op(n, modules)
        if not ok:
            offending.append(_describe(n, modules))
        # An op outside the piecewise-linear list (GELU, sigmoid, ..., run under the override) is not
        # known to be affine either: the head must not then be reported as affine.
        nonlinear |= nl or not ok
        henv[n] = head_graph.node_copy(n, arg)
    head_graph.output(fx.map_arg(output_node.args[0], arg))
    head = fx.GraphModule(gm, head_graph)

    if offending and not allow_nonlinear_head:
        raise NonPiecewiseLinearError(
            f"The head G after layer {layer!r} is not piecewise linear: {'; '.join(offending)}. "
            "RI's linear boundaries exist only for ReLU-family/max-pool/linear heads. Cut ψ at a later "
            "layer, or set `allow_nonlinear_head: true` to run anyway (recorded in the results)."
        )
    if not nonlinear:
        warnings.warn(
            f"The head G after layer {layer!r} is affine (no ReLU or max-pool after it): it has a single "
            "linear region, so all sampled boundaries between two classes are the same and RI collapses. "
            "Cut ψ at an earlier layer.",
            AffineHeadWarning,
            stacklevel=2,
        )
    return SplitModel(model=model, layer=layer, psi=psi, head=head, affine=not nonlinear,
                      nonlinear_override=offending)
