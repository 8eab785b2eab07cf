"""The evaluation's measurements: each method's keep-masks and masked forward against plain batched
inference of the same images, and Score-CAM's batched channel passes against one pass per channel."""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from repint.app.bench.common import Result, med, once, result, rounded
from repint.metrics import KEEP_FRACTION


@functools.lru_cache(maxsize=1)
def eval_setup(seed: int = 0) -> dict[str, Any]:
    """What the evaluation benchmarks share: a randomly initialised ``vgg-small`` (``build_model``) in
    the pipeline's :class:`~repint.model.Classifier` wrapper, split at ``net.psi_layer`` and bound as the
    pipeline's tasks bind it (``G ∘ ψ``, ψ the output of its submodule ``psi``); the
    digits' unseen split (32x32, RGB) with their ψ features (as the ingest stores them: computed here
    once, never timed); reference images for the input image and ACE's cluster and random images."""
    import torch

    from repint.data import DigitsSource
    from repint.methods.gradcam import layer_activations_batch
    from repint.model import PSI_MODULE, Classifier, split_model
    from repint.nets import build_model

    torch.manual_seed(seed)
    ref, unseen = DigitsSource(split="reference"), DigitsSource(split="unseen")
    ref_images = ref.load(np.arange(len(ref.labels)))
    net = build_model("vgg-small", 10, 32)
    mean = tuple(float(v) for v in ref_images.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in ref_images.std(axis=(0, 2, 3)))
    split = split_model(Classifier(net, mean, std).eval(), net.psi_layer)
    model, layer = split.composed, PSI_MODULE
    images = unseen.load(np.arange(len(unseen.labels)))
    return {"model": model, "layer": layer, "images": images, "features": layer_activations_batch(model, layer, images),
            "ref_images": ref_images, "ref_labels": ref.labels}


def interpretation_input(setup: dict[str, Any], ace_images: int, n_boundaries: int = 5, seed: int = 0) -> Any:
    """The centre's :class:`InterpretationInput`: reference image 0, its ψ and predicted class;
    ``n_boundaries`` random hyperplanes in ψ-space (RI); the first ``ace_images`` other reference
    images of its label and as many of other labels (ACE's cluster and random images)."""
    import torch

    from repint.methods import InterpretationInput
    from repint.methods.gradcam import layer_activations

    model, layer, ref, labels = setup["model"], setup["layer"], setup["ref_images"], setup["ref_labels"]
    image = ref[0]
    feats = layer_activations(model, layer, image)
    with torch.no_grad():
        cls = int(model(torch.as_tensor(image[None])).argmax(1)[0])
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_boundaries, feats.size)).astype(np.float32)
    b = -(W @ feats.reshape(-1)) + rng.standard_normal(n_boundaries).astype(np.float32)
    same, other = np.flatnonzero(labels == labels[0])[1:], np.flatnonzero(labels != labels[0])
    return InterpretationInput(model=model, layer=layer, image=image, features=feats, predicted_class=cls,
                               boundaries_W=W, boundaries_b=b, cluster_images=ref[same[:ace_images]],
                               random_images=ref[rng.choice(other, ace_images, replace=False)])



def segment_cache_reset(method: str) -> Callable[[], None] | None:
    """ACE keeps each image's SLIC labels and patch activations in a process-wide cache
    (``repint.methods.ace._CACHE``, keyed by the image's bytes); a fresh cache before each call times a
    run's first evaluation of its images, not the cache. ``None`` for methods without one."""
    from repint.methods import ace

    if method != "ACE" or not hasattr(ace, "_CACHE"):
        return None

    def reset() -> None:
        ace._CACHE = type(ace._CACHE)()

    return reset


def bench_evaluation(method: str, n: int, min_ratio: float | None, repeats: int, ace_images: int = 20,
                     batch_size: int = 128, fraction: float = KEEP_FRACTION) -> Result:
    """The evaluation stage's throughput for one method next to plain batched inference of the same
    ``n`` images.

    Timed per call, ``evaluate_chunk``'s work for one centre without the store: ``keep_masks`` for the
    ``n`` images from their precomputed ψ and the centre's interpretation, ``mask_images``,
    ``batched_forward`` of the masked images. The interpretation itself (``interpret``, its own
    stage, once per centre) is computed beforehand and reported apart. Plain: ``batched_forward`` of
    the ``n`` images. One untimed warm-up of each, then ``repeats`` rounds alternating plain and
    method; images/s from the medians. A method's per-image cache (ACE's segments) is emptied
    before each call; one more call with it full is reported as ``warm_cache_images_per_s``."""
    from repint.methods import get_method
    from repint.metrics import mask_images
    from repint.tasks.common import batched_forward

    setup = eval_setup()
    model, layer = setup["model"], setup["layer"]
    images, feats = setup["images"][:n], setup["features"][:n]
    n = len(images)
    inp = interpretation_input(setup, ace_images)
    m = get_method(method).bind(model, layer)
    dev = next(model.parameters()).device
    interpret_s = once(lambda: m.interpret(inp))
    t = time.perf_counter()
    interp = m.interpret(inp)
    interpret_s = min(interpret_s, time.perf_counter() - t)
    phases: list[dict[str, float]] = []

    def evaluate(images: np.ndarray = images, feats: np.ndarray = feats) -> None:
        t1 = time.perf_counter()
        keep = m.keep_masks(interp, images, feats, fraction)
        t2 = time.perf_counter()
        batched_forward(model, mask_images(images, keep), batch_size, dev)
        phases.append({"keep_masks": t2 - t1, "mask_and_forward": time.perf_counter() - t2})

    def plain() -> np.ndarray:
        return batched_forward(model, images, batch_size, dev)

    reset = segment_cache_reset(method) or (lambda: None)
    plain()  # warms the batch shapes of the masked forward too
    evaluate(images[:2], feats[:2])  # small: ACE's warm-up would take seconds
    phases.clear()
    plain_times, method_times = [], []
    for _ in range(repeats):
        gc.collect()
        reset()
        plain_times.append(once(plain))
        method_times.append(once(evaluate))
    phase_medians = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
    warm = None if segment_cache_reset(method) is None else n / once(evaluate)  # cache full from the last call
    plain_ips, method_ips = n / med(plain_times), n / med(method_times)
    ratio = method_ips / plain_ips
    extra = f", {ace_images} discovery + {ace_images} random images" if method == "ACE" else ""
    stage = f"evaluation {method} (keep-masks + masked forward, N={n:,}{extra})"
    target = "none (reported)" if min_ratio is None else f">= {min_ratio:g}x"
    passed = None if min_ratio is None else ratio >= min_ratio
    details: dict[str, Any] = {
        "method": method, "n": n, "batch_size": batch_size, "keep_fraction": fraction,
        "images_per_s": round(method_ips, 1), "plain_images_per_s": round(plain_ips, 1),
        "times_s": rounded(method_times), "plain_times_s": rounded(plain_times),
        "phases_median_s": phase_medians, "interpret_once_s": round(interpret_s, 4)}
    if method == "ACE":
        details["ace_images"] = ace_images
        details["concepts"] = len(interp.get("concepts", ()))
    if warm is not None:
        details["segment_cache"] = "emptied before each timed call"
        details["warm_cache_images_per_s"] = round(warm, 1)
    if method == "RI":
        details["boundaries"] = len(inp.boundaries_W)
    return result(stage, ratio, target, passed, f"{method_ips:,.0f} img/s",
                  f"{plain_ips:,.0f} img/s (plain batched inference)", **details)


def bench_scorecam_batching(min_ratio: float, repeats: int) -> Result:
    """Score-CAM's channel passes in batches (``ScoreCAM.batch_size`` masked images per forward) over
    one forward per channel (``batch_size=1``, the same code): ratio of the median times of
    ``score_cam_weights`` on the centre's input image, alternating; the weights are asserted equal."""
    from repint.methods.gradcam import layer_activations
    from repint.methods.scorecam import ScoreCAM, score_cam_weights

    setup = eval_setup()
    inp = interpretation_input(setup, ace_images=0)
    acts = layer_activations(inp.model, inp.layer, inp.image)
    batch = ScoreCAM.batch_size

    def batched() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, batch)

    def per_channel() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, 1)

    batched()  # warm-up; batch-1 passes were warmed by interpretation_input (on a loaded machine they take seconds)
    fast_times, slow_times = [], []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fast = batched()
        fast_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        slow = per_channel()
        slow_times.append(time.perf_counter() - t)
    diff = float(np.abs(fast - slow).max())
    if not np.allclose(fast, slow, rtol=1e-5, atol=1e-9):
        raise AssertionError(f"Score-CAM weights differ between batched and per-channel passes (max |diff| {diff:g}).")
    fast_s, slow_s = med(fast_times), med(slow_times)
    ratio = slow_s / fast_s
    k = acts.shape[0]
    return result(f"Score-CAM weights, K={k} channels: one batched pass ({batch} per forward) vs one pass per channel",
                  ratio, f">= {min_ratio:g}x", ratio >= min_ratio, f"{1e3 * fast_s:,.1f} ms",
                  f"{1e3 * slow_s:,.1f} ms (one forward per channel)", channels=k, batch_size=batch,
                  batched_times_ms=rounded(fast_times, 1e3, 2), per_channel_times_ms=rounded(slow_times, 1e3, 2),
                  max_abs_diff=diff, bitwise_identical=bool(np.array_equal(fast, slow)), equal_rtol_1e_5=True)

