"""The torchvision zoo through :func:`repint.layers.recommend`: every classification model, random weights,
small random images; a recommended cut that reproduces the logits, or the one-line refusal."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

__all__ = ["ZOO_IMAGE_SIZE", "ZooResult", "try_model", "zoo_models"]

# the smallest inputs each family runs on (the ViTs and MaxViT assert 224; Inception v3 needs 75)
ZOO_IMAGE_SIZE: dict[str, int] = {"vit_": 224, "maxvit": 224, "inception": 96, "swin": 64}
ZOO_IMAGES = 4


@dataclass
class ZooResult:
    model: str
    image_size: int
    layer: str | None
    shape: tuple[int, ...] | None
    boundaries: int | None
    max_error: float | None
    refusal: str | None
    seconds: float


def zoo_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def image_size(name: str) -> int:
    return next((s for prefix, s in ZOO_IMAGE_SIZE.items() if name.startswith(prefix)), 64)


def try_model(name: str, num_classes: int = 5, seed: int = 0) -> ZooResult:
    """Recommend a cut of torchvision's ``name`` and split it there (checking G(ψ(x)) == F(x))."""
    import torchvision

    from repint.layers import LayerChoiceError, recommend
    from repint.model import example_input, split_model

    start, size = time.perf_counter(), image_size(name)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()
    images = example_input(3, size, n=ZOO_IMAGES, seed=seed)
    try:
        best = recommend(net, images)
    except (LayerChoiceError, ValueError) as exc:
        return ZooResult(name, size, None, None, None, None, str(exc), time.perf_counter() - start)
    sm = split_model(net, best.name, example=images)
    return ZooResult(name, size, best.name, best.shape, best.distinct_boundaries, sm.max_error, None,
                     time.perf_counter() - start)


def markdown(results: list[ZooResult]) -> str:
    rows = ["| model | input | recommended ψ | ψ shape | distinct boundaries (of 4) | max \\|G(ψ(x)) − F(x)\\| | "
            "or: refusal |", "|---|---|---|---|---|---|---|"]
    for r in results:
        shape = "×".join(map(str, r.shape)) if r.shape else ""
        err = f"{r.max_error:.1e}" if r.max_error is not None else ""
        refusal = (r.refusal or "").replace("|", "\\|")
        rows.append(f"| {r.model} | {r.image_size} | {f'`{r.layer}`' if r.layer else '—'} | {shape} | "
                    f"{r.boundaries if r.boundaries is not None else ''} | {err} | {refusal} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m repint.zoo > table.md
    import sys

    out = []
    for name in sys.argv[1:] or zoo_models():
        out.append(try_model(name))
        print(f"{name}: {out[-1].layer or out[-1].refusal} ({out[-1].seconds:.1f} s)", file=sys.stderr, flush=True)
    print(markdown(out))
