"""Choosing the layer ψ: every candidate cut of a network, what RI would get there, and a recommendation.

For each tensor of the traced network (every module's output, and graph nodes that are no module's) a
:class:`LayerReport` says whether the cut separates the network (no skip connection bypasses it), whether
the head ``G`` after it is piecewise linear (naming the op that breaks it) and whether it is affine (one
linear region: RI collapses there), ψ's shape per image, and how many distinct linear boundaries (Eq. 2
at each image) a few images give.

:func:`recommend` picks the deepest cut whose ψ is a spatial feature map (``C x H x W``, ``H, W >= 2``),
whose head is piecewise linear and not affine, and whose boundaries are not all the same on the images;
modules' outputs and top-level ops are preferred over ops inside a module (a block's pre-activation sum is
not a name the user knows), and outputs of pooling ops
are passed over while a non-pooled map qualifies (the authors cut VGG at the ReLU before its last
max-pool, so heat maps keep that resolution).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from repint.graph import (
    OpKind,
    TracedNet,
    batch_size_node,
    bypass_message,
    cut,
    describe,
    is_pool,
    shape_valued,
)
from repint.model import Classifier, run_on, traced

__all__ = ["LayerChoiceError", "LayerReport", "analyse_layers", "distinct_boundaries", "recommend"]


class LayerChoiceError(ValueError):
    """No cut of the network qualifies as ψ for RI."""


@dataclass
class LayerReport:
    """One candidate ψ. ``piecewise_linear``/``affine``/``distinct_boundaries`` are ``None`` where they were not
    computed (a cut that does not separate the network; boundaries only where the head is piecewise linear,
    not affine, and ψ spatial)."""

    name: str
    node: str
    position: int
    shape: tuple[int, ...] | None
    separates: bool
    aliases: list[str] = field(default_factory=list)
    module: bool = True
    inside: str = ""
    reason: str | None = None
    piecewise_linear: bool | None = None
    breaking_op: str | None = None
    affine: bool | None = None
    pool: bool = False
    distinct_boundaries: int | None = None
    recommended: bool = False

    @property
    def spatial(self) -> bool:
        return self.shape is not None and len(self.shape) == 3 and min(self.shape[1:]) >= 2

    @property
    def eligible(self) -> bool:
        return bool(self.separates and self.piecewise_linear and not self.affine and self.spatial
                    and (self.distinct_boundaries or 0) > 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape) if self.shape else None}


class _Runner(nn.Module):
    """An interpreter run as a module call (so :func:`repint.model.run_on` reports bad image sizes)."""

    def __init__(self, run: fx.Interpreter) -> None:
        super().__init__()
        self.run = run

    def forward(self, x: torch.Tensor) -> Any:
        return self.run.run(x)


class _KeepAll(fx.Interpreter):
    """Runs the graph once and keeps every node's value (the images are few)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        # a copy: a later in-place op (LeakyReLU(inplace=True)) must not change the ψ analysed here
        self.values[n] = out.detach().clone() if isinstance(out, torch.Tensor) else out
        return out


def distinct_boundaries(W: np.ndarray, b: np.ndarray, rtol: float = 1e-4) -> int:
    """The number of different hyperplanes among rows ``(W_i, b_i)``: equal within ``rtol`` of ``||W_i||``."""
    reps: list[int] = []
    norms = np.linalg.norm(W, axis=1)
    for i in range(len(b)):
        scale = max(float(norms[i]), 1e-12)
        if not any(np.linalg.norm(W[i] - W[j]) <= rtol * scale and abs(b[i] - b[j]) <= rtol * (scale + abs(b[i]))
                   for j in reps):
            reps.append(i)
    return len(reps)


def _bypassing(net: TracedNet) -> dict[fx.Node, fx.Node | None]:
    """For every node computed from the input: an earlier such node that the part after it still uses (a
    skip connection bypasses the cut there), or ``None`` when every path to the output goes through it."""
    pos, shapes = net.order, shape_valued(net.gm.graph)
    dep: set[fx.Node] = set()
    reach: tuple[int, fx.Node | None] = (-1, None)
    out: dict[fx.Node, fx.Node | None] = {}
    for n in net.gm.graph.nodes:
        if not (n.op == "placeholder" or any(a in dep for a in n.all_input_nodes)):
            continue
        if n.op != "placeholder":
            out[n] = reach[1] if reach[0] > pos[n] else None
        dep.add(n)
        if n in shapes and batch_size_node(n):
            continue  # the head reads the batch size off ψ itself (graph.cut)
        last = max((pos[u] for u in n.users), default=pos[n])
        if last > reach[0]:
            reach = (last, n)
    return out


_PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def _pooled(net: TracedNet, node: fx.Node, pooled: set[fx.Node]) -> bool:
    """A pooling op's output, or the output of dropout/identity applied to one (the same map)."""
    src = node.args[0] if node.args else None
    passes = (node.op == "call_module" and isinstance(net.modules[str(node.target)], _PASS_THROUGH)
              or node.op == "call_function" and getattr(node.target, "__name__", "").startswith("dropout")
              or node.op == "call_method" and node.target in ("contiguous", "clone"))
    if is_pool(node, net.modules) or (passes and src in pooled):
        pooled.add(node)
    return node in pooled


def analyse_layers(model: nn.Module, images: np.ndarray | torch.Tensor, *, boundaries: bool = True
                   ) -> list[LayerReport]:
    """Every candidate ψ of ``model`` (a :class:`Classifier` is analysed on its wrapped net, with its
    normalisation applied to ``images``), in forward order."""
    model = model.eval()
    inner = model.net if isinstance(model, Classifier) else model
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    dev = next(iter(inner.parameters()), torch.empty(0)).device
    x = x.to(dev)
    if isinstance(model, Classifier):
        x = (x - model.mean) / model.std
    net = traced(inner)
    run = _KeepAll(net.gm)
    with torch.no_grad():
        run_on(_Runner(run), x, type(inner).__name__)
    bypass, shapes = _bypassing(net), shape_valued(net.gm.graph)
    out = net.output_node().args[0]
    logits = run.values.get(out) if isinstance(out, fx.Node) else out
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{type(inner).__name__} returns a {type(logits).__name__}, not a tensor of logits: wrap "
                         "it in a `module:function` hook whose forward returns the logits.")
    pooled: set[fx.Node] = set()
    reports: list[LayerReport] = []
    for node in net.gm.graph.nodes:
        value = run.values.get(node)
        _pooled(net, node, pooled)
        if node not in bypass or node.op == "output" or not isinstance(value, torch.Tensor):
            continue
        name, names, skip = net.name(node), net.names_of(node), bypass[node]
        if not names and skip is not None:
            continue  # an inner op of a block: not a candidate anyone names
        rep = LayerReport(name=name, node=node.name, position=net.order[node], shape=tuple(value.shape[1:]),
                          separates=skip is None, aliases=[m for m in names if m != name],
                          module=name != node.name or node.op == "call_module", pool=node in pooled)
        if not rep.module:
            rep.inside = net.owner(node)
        if skip is not None:
            rep.reason = bypass_message(net, name, skip, skip in shapes).split(": ", 1)[1].split(". ")[0]
        else:
            _analyse_head(net, node, rep, value if boundaries else None)
        reports.append(rep)
    return reports


def _analyse_head(net: TracedNet, node: fx.Node, rep: LayerReport, psi: torch.Tensor | None) -> None:
    parts = cut(net, node, rep.name)
    other = [n for n, kind in parts.kinds if kind is OpKind.OTHER]
    rep.piecewise_linear = not other
    rep.breaking_op = describe(net, other[0]) if other else None
    rep.affine = all(kind is OpKind.LINEAR for _, kind in parts.kinds)
    if rep.affine:
        rep.reason = "G is affine: one linear region, every boundary between two classes the same"
    elif other:
        rep.reason = f"G is not piecewise linear: {rep.breaking_op}"
    if psi is not None and rep.piecewise_linear and not rep.affine and rep.spatial:
        W, b = _boundaries(parts.head, psi)
        rep.distinct_boundaries = distinct_boundaries(W, b)


def _boundaries(head: nn.Module, psi: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2 at each row of ``psi``, in float32 (enough to tell boundaries apart; the pipeline's
    :func:`repint.boundaries.linear_boundaries` computes them in float64)."""
    t = psi.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        top = head(t).topk(2, dim=1).values
        delta = top[:, 0] - top[:, 1]
        (grad,) = torch.autograd.grad(delta.sum(), t)
    W = grad.reshape(len(t), -1).double()
    b = delta.detach().double() - (W * t.detach().reshape(len(t), -1).double()).sum(1)
    return W.cpu().numpy(), b.cpu().numpy()


def recommend(model: nn.Module, images: np.ndarray | torch.Tensor,
              reports: list[LayerReport] | None = None) -> LayerReport:
    """The recommended ψ (module docstring); :class:`LayerChoiceError` says why none qualifies."""
    reports = reports if reports is not None else analyse_layers(model, images)
    ok = [r for r in reports if r.eligible]
    if not ok:
        raise LayerChoiceError(_why_none(model, reports))
    # modules' outputs and top-level ops first, then ops inside a module (a block's pre-activation sum), pools last
    for pools, inner in ((False, False), (False, True), (True, True)):
        pick = [r for r in ok if (pools or not r.pool) and (inner or not r.inside)]
        if pick:
            best = max(pick, key=lambda r: r.position)
            best.recommended = True
            return best
    raise AssertionError("unreachable")


def _why_none(model: nn.Module, reports: list[LayerReport]) -> str:
    name = type(model.net if isinstance(model, Classifier) else model).__name__
    breaking = [r for r in reports if r.separates and r.piecewise_linear is False]
    after = [r for r in reports if r.separates and r.piecewise_linear]
    if breaking and not after:
        return (f"{name}: no cut has a piecewise-linear head: {breaking[-1].breaking_op} comes after every cut. "
                "RI's linear boundaries need ReLU-family, max-pool and linear ops after ψ.")
    if breaking:
        why = ("leaves an affine head (RI collapses)" if all(r.affine or not r.spatial for r in after)
               else "leaves no spatial feature map with more than one boundary")
        return (f"{name}: the last op that is not piecewise linear is {breaking[-1].breaking_op}, and every cut "
                f"after it {why}.")
    return (f"{name}: no cut gives a spatial ψ (C x H x W, H, W >= 2) with a piecewise-linear, non-affine head and "
            "more than one boundary on the images; use larger images (data.image_size) or another model.")


def format_reports(reports: list[LayerReport], show_all: bool = False) -> str:
    """The candidates as a text table (``*`` marks the recommendation); cuts that a skip connection
    bypasses only with ``show_all``."""
    rows = [("", "layer", "ψ shape", "G after it", "boundaries", "note")]
    for r in reports:
        if not r.separates and not show_all:
            continue
        if not r.separates:
            head = "(cut bypassed)"
        elif r.piecewise_linear is False:
            head = "not piecewise linear"
        else:
            head = "affine" if r.affine else "piecewise linear"
        note = r.breaking_op if r.piecewise_linear is False else (r.reason if not r.separates else "")
        if r.aliases:
            note = (note + "; " if note else "") + "= " + ", ".join(r.aliases)
        shape = "x".join(map(str, r.shape)) if r.shape else "-"
        rows.append(("*" if r.recommended else "", r.name, shape, head,
                     str(r.distinct_boundaries) if r.distinct_boundaries is not None else "-", note or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows]
    lines.insert(1, "-" * min(120, len(lines[0])))
    return "\n".join(line.rstrip() for line in lines)
