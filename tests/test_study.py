"""The multi-run study: mean ± std over runs with different seeds, and the per-image records CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from repint.storage import FeatureStore

pytestmark = pytest.mark.slow


def test_two_runs_aggregate_and_records(prefect_harness, repint_cache, tmp_path):
    from repint.flows import study
    from repint.flows.spec import build_spec

    cfg = tiny_config(120, 1, 16)
    summary = study(build_spec(cfg, tmp_path), runs=2)

    per_run = [json.loads((tmp_path / f"run-{i}" / "summary.json").read_text()) for i in range(2)]
    assert summary["runs"] == 2 and summary["seeds"] == [0, 1]
    for method in ("RI", "Grad-CAM"):
        ads = [r["methods"][method]["mAD"] for r in per_run]
        ais = [r["methods"][method]["mAI"] for r in per_run]
        got = summary["methods"][method]
        assert got["mAD"] == pytest.approx(np.mean(ads)) and got["mAD_std"] == pytest.approx(np.std(ads, ddof=1))
        assert got["mAI"] == pytest.approx(np.mean(ais)) and got["mAI_std"] == pytest.approx(np.std(ais, ddof=1))
        assert got["runs"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["methods"] == summary["methods"]

    records = pd.read_csv(tmp_path / "records.csv")
    n_unseen = summary["n_unseen"]
    assert len(records) == 2 * 2 * n_unseen
    assert set(records.columns) >= {"method", "run", "image_id", "class", "Y", "Y_masked", "covered"}
    ri0 = records[(records.method == "RI") & (records.run == 0)]
    ad = 100 * np.mean(np.maximum(0, ri0.Y - ri0.Y_masked) / ri0.Y)
    assert ad == pytest.approx(per_run[0]["methods"]["RI"]["mAD"], abs=1e-3)

    # different seeds: different k-means inputs, stores kept apart
    s0 = FeatureStore(str(tmp_path / "store-run0.zarr"), mode="r")
    s1 = FeatureStore(str(tmp_path / "store-run1.zarr"), mode="r")
    assert not np.array_equal(s0.read("boundaries/source"), s1.read("boundaries/source"))


def test_variants_beside_ri_and_case_studies(prefect_harness, repint_cache, tmp_path):
    from repint.flows import study
    from repint.flows.spec import build_spec
    from repint.tasks.casestudy import euclidean_neighbours

    cfg = tiny_config(120, 1, 16)
    cfg.evaluation.variants = [{"q_sampling": "boundary-search"}, {"orient": False}]
    cfg.evaluation.case_studies = 1
    summary = study(build_spec(cfg, tmp_path), runs=1)

    names = ["RI", "Grad-CAM", "RI[orient=false]", "RI[q_sampling=boundary-search]"]
    assert list(summary["methods"]) == names
    records = pd.read_csv(tmp_path / "records.csv")
    assert sorted(records.method.unique()) == sorted(names)
    assert (records.groupby("method").size() == summary["n_unseen"]).all()
    # the orientation variant shares the run's polytopes (same covered images), the Q variant has its own store
    main = FeatureStore(str(tmp_path / "store.zarr"), mode="r")
    np.testing.assert_array_equal(main.read("evaluation/RI.orient-false/covered"), main.read("evaluation/RI/covered"))
    own = FeatureStore(str(tmp_path / "store-variant0.zarr"), mode="r")
    assert own.attrs["stages"]["boundaries"]["fingerprint"] != main.attrs["stages"]["boundaries"]["fingerprint"]
    for variant in names[2:]:
        r = records[records.method == variant]
        ad = 100 * np.mean(np.maximum(0, r.Y - r.Y_masked) / r.Y)
        assert ad == pytest.approx(summary["methods"][variant]["mAD"], abs=1e-3)

    (case,) = summary["case_studies"]
    assert (tmp_path / case["png"]).stat().st_size > 0
    covered = np.flatnonzero(main.read("polytopes/covered", case["centre"]))
    assert set(case["eq6"]) <= set(covered.tolist()) and case["input"] not in case["eq6"]
    assert case["euclidean"] == euclidean_neighbours(main, case["input"]).tolist()
    assert set(case["y_masked"]) == {"RI", "Grad-CAM", "RI[orient=false]"}
    assert all(len(v) == 1 + len(case["eq6"]) + len(case["euclidean"]) and min(v) >= 0 and max(v) <= 1
               for v in case["y_masked"].values())
