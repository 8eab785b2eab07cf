"""The project's default VGG-style CNN, its training loop, and loading of user models."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from repint.checkpoints import load_checkpoint
from repint.model import Classifier, SplitModel, example_input, split_model

__all__ = ["VGG_WIDTHS", "TrainResult", "VGGNet", "augment_batch", "build_model", "build_split", "input_channels_of",
           "load_checkpoint", "load_network", "resolve_device", "train_classifier"]

VGG_WIDTHS: dict[str, tuple[int, ...]] = {
    "vgg-small": (16, 32, 64),  # the embedded demo (32x32 digits)
    "vgg-medium": (32, 64, 128),
    "vgg-large": (32, 64, 128, 256),  # the cats-vs-dogs benchmark (64x64 photos)
}


class VGGNet(nn.Module):
    """A small VGG-style CNN: blocks of two 3x3 convolutions (batch-norm, ReLU) and a max-pool, then a head of
    two hidden ReLU linear layers (so that ``G`` is piecewise linear with many regions).

    The default ψ is ``features.<last ReLU>``: the ReLU after the last convolution, before the last
    max-pool, as in the authors' code (:attr:`psi_layer`).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 image_size: int = 32, hidden: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * side * side, hidden[0]), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], num_classes),
        )
        self.psi_layer = f"features.{len(layers) - 2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def input_channels_of(net: nn.Module) -> int | None:
    """``in_channels`` of the first 2-D convolution the forward pass runs (traced order; registration order if
    the net cannot be traced), or ``None`` without one."""
    from repint.model import traced

    try:
        gm = traced(net).gm
        convs = [gm.get_submodule(str(n.target)) for n in gm.graph.nodes if n.op == "call_module"]
    except ValueError:
        convs = list(net.modules())
    first = next((m for m in convs if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else None


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, otherwise the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# torchvision builds these with other settings when it loads pretrained weights (as its builders do)
_PRETRAINED_SETTINGS: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
}


def build_model(architecture: str, num_classes: int, image_size: int, in_channels: int = 3,
                pretrained: bool = False) -> nn.Module:
    """``vgg-small``/``vgg-medium``/``vgg-large`` (the project's own), a torchvision model name, or ``module:function``.

    ``module:function`` imports and calls user code: it is the one place a config can run code, and
    it is documented as such. ``in_channels`` is 1 for single-channel (MNIST-style) images: the
    project's nets take it; torchvision's take 3 only. ``pretrained``: torchvision's settings for its
    pretrained weights (which are then loaded by :func:`load_network`).
    """
    if architecture in VGG_WIDTHS:
        return VGGNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      widths=VGG_WIDTHS[architecture])
    if ":" in architecture:
        mod_name, fn_name = architecture.split(":", 1)
        try:
            fn: Callable[..., nn.Module] = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model.architecture {architecture!r}: cannot import {fn_name!r} from {mod_name!r} "
                             f"({type(exc).__name__}: {exc}). The module must be importable (on PYTHONPATH or "
                             "installed) and define a function taking num_classes and returning an nn.Module.") from exc
        net = fn(num_classes=num_classes)
        if not isinstance(net, nn.Module):
            raise ValueError(f"model.architecture {architecture!r} returned a {type(net).__name__}, not a "
                             "torch.nn.Module.")
        return net
    import torchvision

    if architecture not in torchvision.models.list_models():
        raise ValueError(f"Unknown architecture {architecture!r}: use one of {sorted(VGG_WIDTHS)}, a torchvision "
                         "model name (e.g. 'vgg11_bn') or 'package.module:function'.")
    if in_channels != 3:
        raise ValueError(f"torchvision's {architecture} takes 3-channel images, not {in_channels}: set "
                         "data.channels: 3 (grey images are then repeated), or bring a single-channel model as "
                         "`module:function`.")
    settings = _PRETRAINED_SETTINGS.get(architecture, {}) if pretrained else {}
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes, **settings)


def load_network(model: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The network a run spec's ``model`` section describes, with its weights: ``checkpoint`` (a file, any
    :mod:`repint.checkpoints` format) or ``weights`` (torchvision's pretrained weights). Returns the
    network and how its weights were found (recorded in the store and ``summary.json``)."""
    from repint.checkpoints import load_checkpoint, load_pretrained, pretrained_weights

    net = build_model(model["architecture"], model["num_classes"], model["image_size"],
                      in_channels=len(model.get("mean") or (0, 0, 0)), pretrained=bool(model.get("weights")))
    loading: dict[str, Any] = {}
    if model.get("checkpoint"):
        fmt = load_checkpoint(net, model["checkpoint"])
        if not fmt.plain:
            loading["checkpoint_format"] = fmt.as_dict()
    elif model.get("weights"):
        weights = pretrained_weights(model["architecture"], model["weights"])
        loading["weights"] = str(weights)
        loading["weights_file"] = load_pretrained(net, weights).name  # the name only: fingerprints ignore TORCH_HOME
    return net, loading


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flips and random shifts by up to 1/8 of the side (reflection padding, then
    a random crop back to the input size), one draw per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    p = max(1, h // 8)
    padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * p)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


@dataclass
class TrainResult:
    train_accuracy: float
    epochs: int
    seconds: float


def train_classifier(
    model: Classifier, images: np.ndarray, labels: np.ndarray, *, epochs: int = 12, batch_size: int = 64,
    lr: float = 2e-3, seed: int = 0, device: str = "auto", augment: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` on pixel-space images ``[N, C, H, W]`` in ``[0, 1]`` with Adam, seeded."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(labels.astype(np.int64))
    start, acc = time.perf_counter(), 0.0
    for epoch in range(epochs):
        order = rng.permutation(len(x_all))
        correct = 0
        for i in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[i: i + batch_size])
            x, y = x_all[idx].to(dev), y_all[idx].to(dev)
            if augment:
                x = augment_batch(x)
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == y).sum())
        sched.step()
        acc = correct / len(order)
        if progress:
            progress(epoch + 1, acc)
    model.eval().cpu()
    return TrainResult(train_accuracy=acc, epochs=epochs, seconds=time.perf_counter() - start)


def build_split(m: dict[str, Any]) -> tuple[SplitModel, dict[str, Any]]:
    """The run spec's ``model`` built, its weights loaded, wrapped in its normalisation and split at ψ
    (``G(ψ(x)) == F(x)`` checked on two seeded random images); and how the weights were found."""
    net, loading = load_network(m)
    clf = Classifier(net, tuple(m["mean"]), tuple(m["std"])).eval()
    for p in clf.parameters():
        p.requires_grad_(True)
    sm = split_model(clf, m["layer"], allow_nonlinear_head=m.get("allow_nonlinear_head", False),
                     example=example_input(len(m["mean"]), m["image_size"]))
    return sm, loading
