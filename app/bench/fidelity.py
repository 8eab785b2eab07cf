"""The faithfulness metrics' measurements (:mod:`repint.scoring`): each metric's per-image columns for
``n`` images against plain batched inference of as many images as the metric runs through the model."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np

from repint.app.bench.common import Result, med, once, result, rounded
from repint.app.bench.evaluation import eval_setup, interpretation_input
from repint.metrics import BASELINES, CURVE_STEPS, KEEP_FRACTIONS


def forwards_per_image(metric: str, fractions: int, steps: int, curves: int) -> int:
    """How many images one image makes the metric run through the model: ``ad-ai`` one per kept
    share, ``road`` two per share (keep, remove), ``deletion-insertion`` ``steps - 1`` per curve (its
    ends are the image, known, and the baseline) plus the baseline once per baseline (deletion ends
    where insertion starts), ``representativeness`` none."""
    baselines = curves // 2
    return {"ad-ai": fractions, "road": 2 * fractions, "deletion-insertion": curves * (steps - 1) + baselines,
            "representativeness": 0}[metric]


def bench_metric(metric: str, n: int, min_ratio: float | None, repeats: int, batch_size: int = 128) -> Result:
    """``score_images`` with only ``metric`` selected, on ``n`` digits with Grad-CAM's reused maps,
    against ``batched_forward`` of as many images as the metric forwards (alternating, medians):
    ratio = plain time / metric time, so 1.0 is a metric that costs nothing but its forward passes."""
    import torch

    from repint.methods import get_method
    from repint.scoring import ScoreSettings, score_images
    from repint.tasks.common import batched_forward

    setup = eval_setup()
    model, layer = setup["model"], setup["layer"]
    images, feats = setup["images"][:n], setup["features"][:n]
    n = len(images)
    m = get_method("Grad-CAM").bind(model, layer)
    interp = m.interpret(interpretation_input(setup, ace_images=0))
    maps, masks = m.reused_maps(interp, images, feats, KEEP_FRACTIONS)
    dev = next(model.parameters()).device
    settings = ScoreSettings((metric,), KEEP_FRACTIONS, CURVE_STEPS, BASELINES, batch_size)
    k = forwards_per_image(metric, len(KEEP_FRACTIONS), CURVE_STEPS, len(settings.curves))
    logits = batched_forward(model, images, batch_size, dev)
    cls = logits.argmax(1)
    y = torch.softmax(torch.as_tensor(logits), 1).numpy()[np.arange(n), cls]
    plain_images = np.concatenate([images] * max(k, 1))

    def forward(x: np.ndarray) -> np.ndarray:
        return batched_forward(model, x, batch_size, dev)

    def scored() -> Any:
        return score_images(forward, images, cls, y, maps, masks, settings)

    def plain() -> np.ndarray:
        return batched_forward(model, plain_images, batch_size, dev)

    scored(), plain()
    metric_times, plain_times = [], []
    for _ in range(repeats):
        gc.collect()
        plain_times.append(once(plain))
        metric_times.append(once(scored))
    ratio = (med(plain_times) / med(metric_times)) if k else None
    passed = None if (min_ratio is None or ratio is None) else ratio >= min_ratio
    target = "none (reported)" if min_ratio is None or ratio is None else f">= {min_ratio:g}x"
    ips = k * n / med(metric_times) if k else n / med(metric_times)
    return result(f"metric {metric} ({k} forwards per image, N={n:,}, {CURVE_STEPS} steps, baselines "
                  f"{'/'.join(BASELINES)}, kept {'/'.join(f'{f:g}' for f in KEEP_FRACTIONS)})", ratio, target, passed,
                  f"{ips:,.0f} {'forwarded ' if k else ''}img/s",
                  f"{k * n / med(plain_times):,.0f} img/s (plain batched inference)" if k else "-",
                  metric=metric, n=n, forwards_per_image=k, times_s=rounded(metric_times),
                  plain_times_s=rounded(plain_times))
