"""The traced graph of a network: where every module's output is, which ops are piecewise linear, and the
cut ``F = G ∘ ψ`` at any tensor of it.

A module's output is the value its ``forward`` returns, functional ops inside it included (a residual block
ending in ``F.relu(out + shortcut)`` outputs that ReLU, not its last submodule's result). The tracer
records it at every call; a module called twice outputs its last call's value.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["CutError", "OpKind", "TracedNet", "cut", "describe", "op_kind", "trace"]


class CutError(ValueError):
    """The tensor named as ψ does not separate the network (a path to the output bypasses it)."""


class OpKind(Enum):
    """How an op of ``G`` depends on its input: linear (affine), piecewise linear, or neither."""

    LINEAR = "linear"
    PIECEWISE = "piecewise linear"
    OTHER = "not piecewise linear"


_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten, nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad2d, nn.ConstantPad1d,
    nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ChannelShuffle, nn.PixelShuffle,
    nn.Upsample,
)
_PIECEWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.RReLU, nn.Hardsigmoid, nn.Threshold,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)

# ops by name, looked up in torch, torch.nn.functional and operator (identity of the objects, not names)
_LINEAR_NAMES = {
    "add", "sub", "neg", "pos", "getitem", "cat", "concat", "stack", "flatten", "reshape", "transpose", "permute",
    "squeeze", "unsqueeze", "chunk", "split", "narrow", "flip", "roll", "mean", "sum", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "linear", "conv1d", "conv2d", "conv3d", "batch_norm", "pad",
    "interpolate", "channel_shuffle", "pixel_shuffle", "contiguous", "clone", "t",
}
_SCALED_NAMES = {"mul", "truediv", "div", "matmul", "mm", "bmm", "einsum"}  # linear with one ψ-dependent operand
_PIECEWISE_NAMES = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "hardsigmoid", "threshold",
    "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "max", "min", "maximum", "minimum", "amax", "amin", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "abs",
    "prelu", "rrelu", "hardshrink", "softshrink",
}
_POOL_NAMES = {n for n in _LINEAR_NAMES | _PIECEWISE_NAMES if "pool" in n}
_METHOD_LINEAR = _LINEAR_NAMES | {"view", "view_as", "expand", "expand_as", "repeat", "add_", "sub_", "neg_", "float",
                                  "type_as", "to", "detach"}
_METHOD_SCALED = _SCALED_NAMES | {"mul_", "div_"}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement"}  # ints, not tensors: constants for G
_CONSTANT_NAMES = {"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
                   "new_empty"}


def _functions(names: Iterable[str]) -> set[object]:
    return {f for name in names for ns in (torch, F, operator, torch.Tensor) if (f := getattr(ns, name, None))}


_LINEAR_FUNCS = _functions(_LINEAR_NAMES) | {getattr}
_SCALED_FUNCS = _functions(_SCALED_NAMES)
_PIECEWISE_FUNCS = _functions(_PIECEWISE_NAMES)
_POOL_FUNCS = _functions(_POOL_NAMES)
_CONSTANT_FUNCS = _functions(_CONSTANT_NAMES)
_LOG_SOFTMAX = _functions({"log_softmax"})


def _target_name(node: fx.Node) -> str:
    return str(node.target) if node.op in ("call_method", "call_module") else getattr(node.target, "__name__",
                                                                                      str(node.target))


def shape_valued(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value does not depend on a tensor's values: shapes (``x.size(0)``, ``x.shape[2]``), arithmetic
    on them, and tensors made from a shape alone (``zeros_like``). ``G`` treats them as constants."""
    out: set[fx.Node] = set()
    for n in graph.nodes:
        source = (n.op == "call_method" and n.target in _SHAPE_METHODS | _CONSTANT_NAMES
                  or n.op == "call_function" and (n.target in _CONSTANT_FUNCS or n.target is getattr
                                                  and n.args[1:2] in (("shape",), ("ndim",))))
        arithmetic = (n.op == "call_function" and n.all_input_nodes and all(a in out for a in n.all_input_nodes)
                      and getattr(n.target, "__module__", None) in ("_operator", "operator", "math", "builtins"))
        if source or arithmetic:
            out.add(n)
    return out


def batch_size_node(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.size()[0]`` or ``x.shape[0]``: the batch size, which the head reads off ψ itself."""
    if node.op == "call_method" and node.target == "size":
        return node.args[1:] == (0,) or node.kwargs == {"dim": 0}
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and (src.op == "call_method" and src.target == "size" and len(src.args) == 1
                                             or src.op == "call_function" and src.target is getattr
                                             and src.args[1] == "shape")
    return False


def _dependent_operands(node: fx.Node, depends: set[fx.Node]) -> list[int]:
    """Positions of the operands (flattened args, then kwargs) that depend on ψ, duplicates counted."""
    flat: list[object] = []
    fx.node.map_aggregate((node.args, node.kwargs), flat.append)
    return [i for i, a in enumerate(flat) if isinstance(a, fx.Node) and a in depends]


def op_kind(node: fx.Node, modules: dict[str, nn.Module], depends: set[fx.Node]) -> OpKind:
    """How ``node`` transforms its inputs that depend on ψ (``depends``): a constant op is linear."""
    if node.op not in ("call_module", "call_function", "call_method"):
        return OpKind.LINEAR
    if node.op == "call_module":
        mod = modules[str(node.target)]
        if isinstance(mod, _PIECEWISE_MODULES):
            return OpKind.PIECEWISE
        if isinstance(mod, nn.modules.batchnorm._NormBase) and not (mod.track_running_stats
                                                                     and mod.running_mean is not None):
            return OpKind.OTHER  # normalises by the batch's own statistics, also in eval
        return OpKind.LINEAR if isinstance(mod, _LINEAR_MODULES) else OpKind.OTHER
    dependent = _dependent_operands(node, depends)
    if not dependent:
        return OpKind.LINEAR  # computed from constants only
    if node.op == "call_function":
        linear, scaled, piecewise = (node.target in _LINEAR_FUNCS, node.target in _SCALED_FUNCS,
                                     node.target in _PIECEWISE_FUNCS)
    else:
        name = str(node.target)
        linear, scaled, piecewise = name in _METHOD_LINEAR, name in _METHOD_SCALED, name in _PIECEWISE_NAMES
    if piecewise:
        return OpKind.PIECEWISE
    if scaled:  # x * 2, x / s, W @ x: linear; x * y, 1 / x of ψ-dependent tensors: not
        division = _target_name(node) in ("truediv", "div", "div_")
        return OpKind.LINEAR if len(dependent) == 1 and not (division and dependent != [0]) else OpKind.OTHER
    return OpKind.LINEAR if linear else OpKind.OTHER


def final_log_softmax(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``log_softmax`` over the classes as the network's last op: it shifts every logit by the same amount, so
    differences of logits (ΔG, Eq. 2), the predicted class and the softmax scores are those of its input.
    ``F.log_softmax(x)`` without ``dim`` takes dim 1 of 2-D logits (PyTorch's legacy rule)."""
    if node.op == "call_module":
        mod = modules[str(node.target)]
        dim = mod.dim if isinstance(mod, nn.LogSoftmax) else "no"
    elif (node.op == "call_function" and node.target in _LOG_SOFTMAX
          or node.op == "call_method" and node.target == "log_softmax"):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    else:
        return False
    return dim in (1, -1, None) and bool(node.users) and all(u.op == "output" for u in node.users)


def is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _POOL_MODULES)
    return node.op == "call_function" and node.target in _POOL_FUNCS or (
        node.op == "call_method" and str(node.target) in _POOL_NAMES)


def mutates_input(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An in-place op (``relu_``, ``add_``, ``inplace=True``): it would overwrite ψ if applied to it."""
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op in ("call_function", "call_method"):
        return bool(node.kwargs.get("inplace")) or _target_name(node).endswith("_") and not _target_name(
            node).startswith("_")
    return False


class _OutputTracer(fx.Tracer):
    """``torch.fx``'s tracer, recording the node each module call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[str, list[fx.Node]] = {}

    def call_module(self, m: nn.Module, forward, args, kwargs):  # noqa: ANN001, ANN201
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs.setdefault(self.path_of_module(m), []).append(out.node)
        return out


def _stack(node: fx.Node) -> list[str]:
    """The modules ``node`` is computed in, outermost first (fx marks a module's later calls ``name@1``)."""
    return [str(k).split("@", 1)[0] for k in (node.meta.get("nn_module_stack") or {})]


@dataclass
class TracedNet:
    """A traced network: its graph, and the output node of every module (its last call's)."""

    gm: fx.GraphModule
    module_outputs: dict[str, fx.Node]
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        self.by_name = {n.name: n for n in self.gm.graph.nodes}

    def names_of(self, node: fx.Node) -> list[str]:
        """The modules whose output is ``node``: first those that compute it (outermost first), then those
        that pass it through (an empty ``nn.Sequential`` shortcut returns its input)."""
        names = [m for m, n in self.module_outputs.items() if n is node]
        return sorted(names, key=lambda m: (not self.computes(m, node), m.count("."), m))

    def computes(self, module: str, node: fx.Node) -> bool:
        """Is ``node`` computed inside ``module``'s forward (rather than passed through it)?"""
        return module in _stack(node) or (node.op == "call_module" and node.target == module)

    def name(self, node: fx.Node) -> str:
        """The user's name for ``node``: the outermost module that computes it, else the graph node's name."""
        names = self.names_of(node)
        return names[0] if names and self.computes(names[0], node) else node.name

    def owner(self, node: fx.Node) -> str:
        """The innermost module in whose forward ``node`` is computed (``''`` at the top level)."""
        stack = _stack(node)
        if node.op == "call_module" and stack and stack[-1] == node.target:
            stack = stack[:-1]
        return str(stack[-1]) if stack else ""

    def node(self, layer: str) -> fx.Node:
        """The tensor ``layer`` names: a module's output, else a graph node."""
        if layer in self.module_outputs:
            return self.module_outputs[layer]
        if layer in self.by_name and self.by_name[layer].op not in ("placeholder", "output", "get_attr"):
            return self.by_name[layer]
        raise KeyError(layer)

    def output_node(self) -> fx.Node:
        return next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")


def trace(model: nn.Module) -> TracedNet:
    """Trace ``model`` (in eval mode) with torch.fx, recording every module's output."""
    tracer = _OutputTracer()
    graph = tracer.trace(model)
    outputs = {k: v[-1] for k, v in tracer.outputs.items()}
    modules = {name for name, _ in model.named_modules() if name}
    for n in list(graph.nodes):
        # a graph node is named like a module (a top-level F.relu beside a module `relu`, an earlier call of a
        # module called twice) but is not that module's output: rename it, so each name means one tensor
        if n.name in modules and outputs.get(n.name) is not n:
            n._rename(f"{n.name}_{'call' if n.op == 'call_module' else 'op'}")
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return TracedNet(gm=gm, module_outputs=outputs)


def describe(net: TracedNet, node: fx.Node) -> str:
    """``module 'layer3.0.relu' (ReLU)`` or ``function 'gelu' (graph node 'gelu_3', in 'blocks.2')``."""
    if node.op == "call_module":
        return f"module {node.target!r} ({type(net.modules[str(node.target)]).__name__})"
    owner = net.owner(node)
    where = f", in {owner!r}" if owner else ""
    return f"{node.op.replace('call_', '')} {_target_name(node)!r} (graph node {node.name!r}{where})"


def _depends_on_input(graph: fx.Graph, stop: fx.Node) -> set[fx.Node]:
    """Nodes that depend on the model input without going through ``stop``."""
    dep: set[fx.Node] = set()
    for n in graph.nodes:
        if n is stop:
            continue
        if n.op == "placeholder" or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


@dataclass
class Cut:
    """``ψ`` (input -> the target tensor) and ``G`` (ψ -> output) as graph modules, and G's ops."""

    psi: fx.GraphModule
    head: fx.GraphModule
    kinds: list[tuple[fx.Node, OpKind]]


def cut(net: TracedNet, target: fx.Node, layer: str) -> Cut:
    """Split ``net`` at ``target``. Raises :class:`CutError` when a path to the output bypasses it."""
    order = list(net.gm.graph.nodes)
    pos = net.order[target]
    input_dep = _depends_on_input(net.gm.graph, target)
    shapes = shape_valued(net.gm.graph)

    psi_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in order[: pos + 1]:
        env[n] = psi_graph.node_copy(n, lambda a: env[a])
    psi_graph.output(env[target])

    head_graph = fx.Graph()
    t = head_graph.placeholder("t")
    mutating = any(mutates_input(n, net.modules) for n in order[pos + 1:])
    henv: dict[fx.Node, fx.Node] = {target: head_graph.call_method("clone", (t,)) if mutating else t}

    def arg(a: fx.Node) -> fx.Node:
        if a in henv:
            return henv[a]
        if a in input_dep and a in shapes and batch_size_node(a):  # x.size(0) taken before the cut: ψ's own
            henv[a] = head_graph.call_method("size", (t, 0))
            return henv[a]
        if a in input_dep:
            raise CutError(bypass_message(net, layer, a, a in shapes))
        henv[a] = head_graph.node_copy(a, arg)  # a constant (get_attr) defined before the layer
        return henv[a]

    depends, kinds = {target}, []
    for n in order[pos + 1:]:
        if n.op == "output":
            break
        henv[n] = head_graph.node_copy(n, arg)
        if n not in shapes and any(a in depends for a in n.all_input_nodes):
            kinds.append((n, OpKind.LINEAR if final_log_softmax(n, net.modules) else op_kind(n, net.modules, depends)))
            depends.add(n)
    head_graph.output(fx.map_arg(net.output_node().args[0], arg))
    return Cut(psi=fx.GraphModule(net.gm, psi_graph), head=fx.GraphModule(net.gm, head_graph), kinds=kinds)


def bypass_message(net: TracedNet, layer: str, used: fx.Node, shape: bool = False) -> str:
    """Why a cut at ``layer`` does not separate the network: ``used`` is computed before it and used after it."""
    name = net.name(used)
    owner = net.owner(used) if name == used.name else ""  # a module's name says where it is
    where = f" (inside {owner!r})" if owner else ""
    if shape:
        return (f"Layer {layer!r} does not separate the network: the part after it uses the shape {name!r}{where}, "
                "taken before it from another tensor. Take the shape from the tensor after the cut (out.size(1) "
                "rather than x.size(1)), or choose another layer.")
    return (f"Layer {layer!r} does not separate the network: the part after it also uses {name!r}{where}, "
            "computed before it (a skip connection?). Choose a layer that every path to the output goes through, "
            "e.g. a whole block (`repint layers` lists them).")
