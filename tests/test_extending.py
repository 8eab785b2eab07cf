"""Extending RepInt as the README's "Where a change goes" says: a baseline method is one registered
class, and the config, the pipeline, the store and the tables follow it with no other change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from repint.methods import METHODS, CAMMethod, InterpretationInput, register


class UniformCAM(CAMMethod):
    """Every channel weighs the same: the map is the mean of ψ over channels."""

    name = "Uniform-CAM"

    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        return np.full((1, inp.features.shape[0]), 1.0 / inp.features.shape[0], dtype=np.float32)


@pytest.fixture
def uniform_cam():
    register(UniformCAM)
    yield UniformCAM
    METHODS._items.pop(UniformCAM.name)


@pytest.mark.slow
def test_a_registered_baseline_runs_through_the_pipeline(prefect_harness, repint_cache, tmp_path, uniform_cam):
    from repint.config import Config
    from repint.flows import pipeline
    from repint.flows.spec import build_spec
    from repint.storage import FeatureStore

    cfg = tiny_config(120, 1, 10).model_dump()
    cfg["evaluation"].update(methods=["RI", "Uniform-CAM"], case_studies=0)
    spec = build_spec(Config.model_validate(cfg), tmp_path / "out")
    summary = pipeline(spec)
    assert list(summary["methods"]) == ["RI", "Uniform-CAM"]
    store = FeatureStore(spec.store, mode="r")
    written = json.loads((Path(spec.out_dir) / "summary.json").read_text())["methods"]["Uniform-CAM"]
    assert written["n"] == store.shape("unseen/predictions")[0] and 0 <= written["mAD"] <= 100
    k = store.shape("reference/features")[1]
    np.testing.assert_allclose(store.read_group("interpretations/Uniform-CAM/c0")["channel_weights"],
                               np.full((1, k), 1 / k), rtol=1e-6)
    assert store.attrs["stages"]["evaluate-Uniform-CAM"]["complete"]
