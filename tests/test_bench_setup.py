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
