"""Split a classifier ``F = G ∘ ψ`` at a named layer and check that ``G`` is piecewise linear.

``ψ`` is the output of the named layer (any module's, functional ops included, or a named graph node);
``G`` is everything after it. RI's theory holds only when ``G`` is piecewise linear (ReLU family,
max/avg pooling, linear, batch-norm in eval mode, dropout in eval mode, sums, concatenations, reshapes);
anything else is refused unless explicitly overridden. ``repint.graph`` holds the tracing and the op lists.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from repint.graph import OpKind, TracedNet, cut, describe, trace

__all__ = [
    "AffineHeadWarning",
    "Classifier",
    "LayerNotFoundError",
    "NonPiecewiseLinearError",
    "SplitMismatchError",
    "SplitModel",
    "check_split",
    "example_input",
    "split_model",
]


class LayerNotFoundError(ValueError):
    """The layer named as ψ does not exist in the model."""


class NonPiecewiseLinearError(ValueError):
    """The head G contains an operation that is not piecewise linear."""


class SplitMismatchError(ValueError):
    """``G(ψ(x))`` does not reproduce ``F(x)``: the traced parts are not the model."""


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


@dataclass
class SplitModel:
    """``model`` split at ``layer`` into ``psi`` (input -> ψ) and ``head`` (ψ -> logits, i.e. G).

    ``layer`` is the user's name (relative to :class:`Classifier`'s wrapped net); ``names`` every module
    whose output is the same tensor. :attr:`composed` is ``G ∘ ψ`` as one module whose submodule
    :data:`PSI_MODULE` outputs ψ: hook-based methods (Grad-CAM and the like) bind to it, so that ψ is a
    module output for them even where it is a functional op's result or the output of a module called twice.
    """

    model: nn.Module
    layer: str
    psi: nn.Module
    head: nn.Module
    affine: bool
    nonlinear_override: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    max_error: float | None = None

    def __post_init__(self) -> None:
        self.composed = Composed(self.psi, self.head)


PSI_MODULE = "psi"


class Composed(nn.Module):
    """``head(psi(x))``: the model recomposed from its two parts (sharing their parameters)."""

    def __init__(self, psi: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.psi, self.head = psi, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.psi(x))


class _Normalised(nn.Module):
    """ψ of a :class:`Classifier`: its normalisation, then the wrapped net's ψ."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, psi: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.net = psi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# torch.fx patches ``nn.Module.__call__`` for the whole process while it traces: a forward pass that
# another thread runs meanwhile is recorded into the trace and fails ("module is not installed as a
# submodule"). Traces therefore take this lock, and the callers that run in threads (the tasks'
# model cache, ACE's split) trace once under it before their first forward pass.
TRACE_LOCK = threading.RLock()


def traced(model: nn.Module) -> TracedNet:
    """``model`` traced with torch.fx (under :data:`TRACE_LOCK`); a model fx cannot trace is a clear error."""
    try:
        with TRACE_LOCK:
            return trace(model)
    except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ValueError(
            f"Cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {first}). RepInt needs "
            "a model whose forward has no data-dependent control flow; wrap it in a `module:function` "
            "hook that returns a traceable nn.Module."
        ) from exc


def layer_names(net: TracedNet) -> list[str]:
    """Every module whose output is a tensor, in the order the forward pass computes them."""
    return sorted(net.module_outputs, key=lambda m: (net.order[net.module_outputs[m]], m.count(".")))


def example_input(channels: int, image_size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random images ``[n, channels, image_size, image_size]`` in ``[0, 1]`` (for the G∘ψ check)."""
    return torch.rand(n, channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def split_model(model: nn.Module, layer: str, *, example: torch.Tensor | None = None,
                allow_nonlinear_head: bool = False, warn_affine: bool = True) -> SplitModel:
    """Split ``model`` at ``layer`` into ``ψ`` and ``G`` with ``G(ψ(x)) == model(x)``.

    ``layer`` names a module (its output: the value its forward returns, functional ops included) or a
    graph node of torch.fx (a tensor that is no module's output, e.g. ``add_3``). For a
    :class:`Classifier`, names are those of the wrapped net (the user's own). With ``example`` (images),
    ``G(ψ(x)) == F(x)`` is checked to 1e-5.

    Raises :class:`LayerNotFoundError` listing the model's layers when ``layer`` is unknown, a
    ``ValueError`` when a path to the output bypasses it (a skip connection), :class:`NonPiecewiseLinearError`
    naming the offending op when ``G`` is not piecewise linear (unless ``allow_nonlinear_head``),
    :class:`SplitMismatchError` when G∘ψ does not reproduce the model on ``example``; warns
    :class:`AffineHeadWarning` when ``G`` is affine.
    """
    model = model.eval()
    inner = model.net if isinstance(model, Classifier) else model
    net = traced(inner)
    try:
        target = net.node(layer)
    except KeyError:
        names = layer_names(net)
        raise LayerNotFoundError(
            f"Layer {layer!r} does not exist in {type(inner).__name__} (as a module whose output is a tensor, or a "
            f"graph node). Its layers are: {', '.join(names)}. Name the layer whose output is ψ (for VGG-style "
            "nets: the ReLU after the last convolution); `repint layers` lists the candidates and recommends one."
        ) from None
    parts = cut(net, target, layer)
    offending = [describe(net, n) for n, kind in parts.kinds if kind is OpKind.OTHER]
    # An op outside the piecewise-linear lists (GELU, sigmoid, ..., run under the override) is not known to
    # be affine either: the head must not then be reported as affine.
    nonlinear = any(kind is not OpKind.LINEAR for _, kind in parts.kinds)
    if offending and not allow_nonlinear_head:
        raise NonPiecewiseLinearError(
            f"The head G after layer {layer!r} is not piecewise linear: {'; '.join(offending)}. "
            "RI's linear boundaries exist only for ReLU-family/max-pool/linear heads. Cut ψ at a later "
            "layer (`repint layers` lists them), or set `allow_nonlinear_head: true` to run anyway (recorded "
            "in the results)."
        )
    if not nonlinear and warn_affine:
        warnings.warn(
            f"The head G after layer {layer!r} is affine (no ReLU or max-pool after it): it has a single "
            "linear region, so all sampled boundaries between two classes are the same and RI collapses. "
            "Cut ψ at an earlier layer (`repint layers` recommends one).",
            AffineHeadWarning,
            stacklevel=2,
        )
    psi: nn.Module = parts.psi
    if isinstance(model, Classifier):
        psi = _Normalised(model.mean, model.std, parts.psi)
    sm = SplitModel(model=model, layer=layer, psi=psi, head=parts.head, affine=not nonlinear,
                    nonlinear_override=offending, names=net.names_of(target) or [target.name])
    if example is not None:
        sm.max_error = check_split(sm, example)
    return sm


def run_on(model: nn.Module, x: torch.Tensor, name: str | None = None) -> object:
    """``model(x)``; a model that cannot take images of ``x``'s shape is a one-line error naming the settings."""
    try:
        return model(x)
    except RuntimeError as exc:
        name = name or type(model.net if isinstance(model, Classifier) else model).__name__
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ValueError(f"{name} does not run on {x.shape[1]}x{x.shape[2]}x{x.shape[3]} images ({first}): set "
                         "data.image_size (repint layers: --image-size) and data.channels (--channels) to what the "
                         "model takes.") from None


def check_split(sm: SplitModel, example: torch.Tensor, tol: float = 1e-5) -> float:
    """The largest ``|G(ψ(x)) - F(x)|`` on ``example`` (relative to the logits' scale when above 1);
    :class:`SplitMismatchError` when it exceeds ``tol``."""
    dev = next(iter(sm.model.parameters()), torch.empty(0)).device
    x = example.to(dev, torch.float32)
    with torch.no_grad():
        full = run_on(sm.model, x)
        if not isinstance(full, torch.Tensor):
            raise ValueError(f"{type(sm.model).__name__} returns a {type(full).__name__}, not a tensor of logits: "
                             "wrap it in a `module:function` hook whose forward returns the logits.")
        split = sm.head(sm.psi(x))
    # non-finite logits (NaN weights, say) are the ingest's to report, naming the images: compare the rest
    finite = torch.isfinite(full)
    if not torch.equal(finite, torch.isfinite(split)):
        err = float("inf")
    else:
        scale = max(1.0, float(full[finite].abs().max())) if finite.any() else 1.0
        err = float((split - full)[finite].abs().max()) / scale if finite.any() else 0.0
    if not err <= tol:
        raise SplitMismatchError(
            f"G(ψ(x)) differs from the model's output by {err:.3g} (relative) at layer {sm.layer!r}: the traced "
            "parts do not reproduce the model. Its forward may depend on state or randomness (dropout called "
            "with training=True, in-place changes of a tensor used later); make it deterministic in eval mode.")
    return err
