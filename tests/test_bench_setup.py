"""`repint bench`'s evaluation setup binds every method as the pipeline's tasks do (G ∘ ψ, ψ the output of
its submodule ``psi``): each method interprets its centre and reuses it on images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from repint.app import bench
from repint.methods import get_method


@pytest.mark.parametrize("method", ["RI", "Grad-CAM", "Grad-CAM++", "Score-CAM", "ACE"])
def test_every_method_runs_on_the_bench_setup(method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setup = bench.eval_setup()
        inp = bench.interpretation_input(setup, ace_images=3)
        m = get_method(method).bind(inp.model, inp.layer)
        interp = m.interpret(inp)
        images, feats = setup["images"][:4], setup["features"][:4]
        keep = m.keep_masks(interp, images, feats, 0.2)
    assert keep.shape == (4, *images.shape[-2:]) and keep.dtype == bool
    assert np.all(keep.sum((1, 2)) > 0)
    assert setup["features"].shape[1:] == (64, 8, 8)  # ψ of vgg-small at 32 px: the ReLU before the last pool


def test_the_explain_line_times_explain_and_plain_inference_on_a_store_the_tasks_build():
    """`repint bench --only explain`: a store built by the pipeline's tasks from the digits opens with
    `Interpretations.load`; the line times `explain` (+ `similar`) chunk by chunk against plain inference
    of the same images and reports the ratio of their throughputs; the memory child explains every image."""
    from repint import Interpretations
    from repint.app.bench.explain import bench_explain, bench_store, explain_child
    from repint.app.bench.targets import plan

    assert [g for g, _ in plan(quick=True, only={"explain"})] == ["explain", "explain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ri = Interpretations.load(bench_store())
        assert ri.n_interpretations >= 2 and len(np.unique(ri.centre_class)) >= 2
        r = bench_explain(64, repeats=1, chunk=32, k=2)
        child = explain_child({"store": bench_store(), "n": 64, "chunk": 32, "k": 2})
    d = r["details"]
    assert r["pass"] is (r["ratio"] >= 0.7) and r["target"] == ">= 0.7x"
    assert r["ratio"] == pytest.approx(d["images_per_s"]["explain+similar"] / d["images_per_s"]["plain"], rel=1e-2)
    assert r["ratio"] > 0
    assert {len(t) for t in d["times_s"].values()} == {1} and d["n"] == 64 and d["chunk"] == 32
    assert {"plain_inference", "forward_psi_logits", "heatmaps_and_kept", "similar"} <= set(d["per_chunk_median_ms"])
    assert child["n"] == 64 and child["rss_kib"]["increment"] >= 0
