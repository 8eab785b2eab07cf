"""End-to-end: the `pipeline` flow on a small digits subset under a Prefect test harness, checking
the store against recomputation and the summary against the stored records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config

from repint.metrics import AverageDropIncrease
from repint.signs import sign_bits, unpack_signs
from repint.storage import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_spec_run(prefect_harness, repint_cache, tmp_path_factory):
    from repint.flows import pipeline
    from repint.flows.spec import build_spec

    cfg = tiny_config(240, 2, 30, runner="dask")  # the default runner: a local Dask cluster on 127.0.0.1
    cfg.runtime.chunk_size = 64
    cfg.evaluation.methods = [*cfg.evaluation.methods, "RI[fallback=least-violated]"]
    out = tmp_path_factory.mktemp("demo")
    spec = build_spec(cfg, out)
    summary = pipeline(spec)
    return out, summary, FeatureStore(str(out / "store.zarr"), mode="r"), spec


@pytest.fixture(scope="module")
def demo_run(demo_spec_run):
    return demo_spec_run[:3]


def test_summary_file_matches_returned_summary(demo_run):
    out, summary, _ = demo_run
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("dataset", "model", "layer", "n_reference", "n_unseen", "n_classes", "n_interpretations",
                "q_sampling", "n_boundaries", "methods", "timings_s"):
        assert key in on_disk, key
    assert on_disk["dataset"] == "digits"
    assert on_disk["n_classes"] == 10
    assert on_disk["n_interpretations"] == 20
    assert on_disk["n_boundaries"] == 30
    assert set(on_disk["methods"]) == {"RI", "Grad-CAM", "RI[fallback=least-violated]"}
    assert on_disk["methods"]["RI"]["mAD"] == summary["methods"]["RI"]["mAD"]
    assert 0 <= on_disk["methods"]["RI"]["covered_unseen"] <= on_disk["n_unseen"]
    for fig in on_disk["figures"]:
        assert (out / fig["png"]).stat().st_size > 1000


def test_figures_show_the_covered_images_most_similar_by_eq6(demo_run):
    """The report's figures and case studies take their similar images from one chunked pass over the
    store for all of them: the same images as Eq. 6 ranked over each whole cover in memory."""
    from repint.ranking import rank_similar

    out, _, store = demo_run
    on_disk = json.loads((out / "summary.json").read_text())
    feats = store.read("reference/features")
    assert on_disk["figures"] and len(on_disk["figures"]) == len(on_disk["case_studies"])
    for fig, case in zip(on_disk["figures"], on_disk["case_studies"], strict=True):
        v, x = fig["centre"], fig["input"]
        cover = np.flatnonzero(store.read("polytopes/covered", v))
        cover = cover[cover != x]
        ids = store.read("polytopes/boundaries", v)
        want = cover[rank_similar(store.read("boundaries/W")[ids[ids >= 0]], feats[x], feats[cover])[:4]]
        assert len(want) and fig["similar"] == want.tolist()
        assert case["centre"] == v and case["eq6"] == want.tolist()


def test_store_layout_and_stages(demo_run):
    _, summary, store = demo_run
    n, n_u = summary["n_reference"], summary["n_unseen"]
    assert n == 240 and n_u == 240
    feats = store.read("reference/features")
    assert feats.shape[0] == n and feats.ndim == 4
    assert store.root["reference/features"].chunks[0] == 64
    assert store.read("reference/predictions").shape == (n,)
    assert store.read("reference/ids").shape == (n,)
    assert store.shape("signs/reference") == (n, -(-30 // 8))
    stages = store.attrs["stages"]
    for stage in ("ingest-reference", "ingest-unseen", "centres", "boundaries", "signs-reference", "signs-unseen",
                  "polytopes", "interpret-RI", "evaluate-RI", "interpret-Grad-CAM", "evaluate-Grad-CAM"):
        assert stages[stage]["complete"], stage


def test_sign_bits_equal_recomputation(demo_run):
    _, _, store = demo_run
    W, b = store.read("boundaries/W"), store.read("boundaries/b")
    for split in ("reference", "unseen"):
        expected = sign_bits(store.read(f"{split}/features"), W, b)
        np.testing.assert_array_equal(store.read(f"signs/{split}"), expected)


def test_polytopes_cover_their_input_and_satisfy_delta(demo_run):
    _, _, store = demo_run
    m = store.shape("boundaries/b")[0]
    signs = unpack_signs(store.read("signs/reference"), m)
    preds = store.read("reference/predictions")
    inputs = store.read("centres/input_index")
    ids_all, orient_all = store.read("polytopes/boundaries"), store.read("polytopes/orientation")
    for v, x in enumerate(inputs):
        ids = ids_all[v][ids_all[v] >= 0]
        covered = (signs[:, ids] == orient_all[v][: len(ids)]).all(axis=1)
        np.testing.assert_array_equal(covered, store.read("polytopes/covered", v))
        assert covered[x]
        other = preds != preds[x]
        assert (covered & other).sum() <= store.read("polytopes/tau")[v]
        assert len(set(ids.tolist())) == len(ids)


def test_ad_ai_recomputed_from_records(demo_run):
    _, summary, store = demo_run
    for method in ("RI", "Grad-CAM"):
        metric = AverageDropIncrease()
        metric.update(store.read(f"evaluation/{method}/y"), store.read(f"evaluation/{method}/y_masked"))
        s = metric.summary()
        assert s["AD"] == pytest.approx(summary["methods"][method]["mAD"], abs=1e-3)
        assert s["AI"] == pytest.approx(summary["methods"][method]["mAI"], abs=1e-3)
        kept = store.read(f"evaluation/{method}/kept_fraction")
        assert np.allclose(kept, 205 / 1024)  # exactly round(0.2 * 32 * 32) pixels kept


def test_every_metric_split_by_coverage_from_records(demo_run):
    """The new metrics on the same reused maps: AD at the 20% kept share recomputed through
    ``y_kept`` equals mAD (two separate masking paths), the splits partition the unseen images by RI's
    coverage and each split's mAD is the drop over exactly those images; curves start at Y (deletion)
    and end at it (insertion); ROAD keeps probabilities in [0, 1]."""
    _, summary, store = demo_run
    ri_covered = store.read("evaluation/assignment/ri_covered")
    for method in ("RI", "Grad-CAM"):
        m = summary["methods"][method]
        y, ym = store.read(f"evaluation/{method}/y"), store.read(f"evaluation/{method}/y_masked")
        assert m["metrics"]["AD@20"]["all"] == pytest.approx(m["mAD"], abs=1e-3)
        assert m["n_covered"] == int(ri_covered.sum()) and len(ri_covered) == len(y) == summary["n_unseen"]
        for split, sel in (("covered", ri_covered), ("uncovered", ~ri_covered)):
            drop = 100 * np.mean(np.maximum(0, y[sel] - ym[sel]) / y[sel])
            assert m["metrics"]["mAD"][split] == pytest.approx(drop, abs=1e-6)
        curves = store.read(f"evaluation/{method}/curves")
        names = store.node_attrs(f"evaluation/{method}")["curves"]
        assert curves.shape == (len(y), len(names), 9)  # the default 8 steps
        np.testing.assert_allclose(curves[:, names.index("deletion-black"), 0], y, rtol=1e-5)
        np.testing.assert_allclose(curves[:, names.index("insertion-blur"), -1], y, rtol=1e-5)
        road = store.read(f"evaluation/{method}/road_keep")
        assert road.shape == (len(y), 3) and ((road >= 0) & (road <= 1)).all()
        assert -1 <= m["metrics"]["rank-agreement"]["all"] <= 1
    assert summary["n_distinct_polytopes"] <= summary["n_interpretations"]
    assert summary["methods"]["RI"]["distinct_polytopes"] == summary["n_distinct_polytopes"]


def test_a_fallback_variant_reuses_ris_interpretations(demo_run):
    """RI[fallback=least-violated] is evaluated beside RI from the same interpretations (no stage of
    its own) and the same assignment: the covered images keep RI's polytope, the others get the
    least-violated rule's centre, which has the image's class wherever some centre has it."""
    _, summary, store = demo_run
    stages = store.attrs["stages"]
    assert "interpret-RI.fallback-least-violated" not in stages and stages["evaluate-RI.fallback-least-violated"]
    from repint.assignment import fallbacks

    covered = store.read("evaluation/assignment/ri_covered")
    ri, lv = store.read("evaluation/RI/centre"), store.read("evaluation/RI.fallback-least-violated/centre")
    rule = store.read("evaluation/assignment/fallback_centre")[:, fallbacks().index("least-violated")]
    np.testing.assert_array_equal(lv[covered], ri[covered])
    np.testing.assert_array_equal(lv[~covered], rule[~covered])
    preds, centre_class = store.read("unseen/predictions"), store.read("centres/predicted_class")
    has = np.isin(preds, centre_class)
    assert (centre_class[lv[has]] == preds[has]).all()
    m = summary["methods"]["RI[fallback=least-violated]"]
    assert m["metrics"]["mAD"]["covered"] == pytest.approx(summary["methods"]["RI"]["metrics"]["mAD"]["covered"])


def test_rerun_does_no_work_twice(demo_run, prefect_harness):
    from repint.flows import pipeline
    from repint.flows.spec import build_spec

    out, summary, store = demo_run
    before = {k: v["fingerprint"] for k, v in store.attrs["stages"].items()}
    chunk_files = sorted((out / "store.zarr").glob("*/*/c/**/*"))
    chunk_files = [p for p in chunk_files if p.is_file()]
    assert chunk_files
    mtimes = {p: p.stat().st_mtime_ns for p in chunk_files}
    cfg = tiny_config(240, 2, 30)
    cfg.runtime.chunk_size = 64
    cfg.evaluation.methods = [*cfg.evaluation.methods, "RI[fallback=least-violated]"]
    again = pipeline(build_spec(cfg, out))
    assert again["methods"] == summary["methods"]
    store2 = FeatureStore(str(out / "store.zarr"), mode="r")
    assert {k: v["fingerprint"] for k, v in store2.attrs["stages"].items()} == before
    # no chunk of features, signs, polytopes or evaluation records was written again
    assert {p: p.stat().st_mtime_ns for p in chunk_files} == mtimes


def test_boundary_search_variant(prefect_harness, repint_cache, tmp_path):
    """The authors' variant: a Q of its own per input, walked to the decision boundary."""
    from repint.flows import pipeline
    from repint.flows.spec import build_spec

    cfg = tiny_config(150, 1, 12, q_sampling="boundary-search")
    summary = pipeline(build_spec(cfg, tmp_path))
    store = FeatureStore(str(tmp_path / "store.zarr"), mode="r")
    owner = store.read("boundaries/owner")
    v = summary["n_interpretations"]
    assert summary["q_sampling"] == "boundary-search"
    assert np.bincount(owner, minlength=v).tolist() == [12] * v
    preds = store.read("reference/predictions")
    source = store.read("boundaries/source")
    inputs = store.read("centres/input_index")
    # each boundary was walked towards a reference image of another class than its owner's input
    assert (preds[source] != preds[inputs[owner]]).all()
    ids = store.read("polytopes/boundaries")
    for c in range(v):
        chosen = ids[c][ids[c] >= 0]
        assert (owner[chosen] == c).all()
    assert set(summary["methods"]) == {"RI", "Grad-CAM"}


def test_ace_discovery_images_are_the_cluster_members_nearest_its_centre(demo_spec_run):
    """ACE's discovery images, read chunk by chunk (a cluster's ψ never whole): the members of the
    centre's k-means cluster nearest the centre, as computed on the whole array in memory."""
    from repint.tasks.common import source
    from repint.tasks.interpret import cluster_images

    _, _, store, spec = demo_spec_run
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"ace_images": 3})})
    feats, labels = store.read("reference/features"), store.read("centres/labels")
    for v in range(4):
        members = np.flatnonzero(labels == v)
        d = np.linalg.norm(feats[members].reshape(len(members), -1) - store.read("centres/vectors", v), axis=1)
        want = np.sort(members[np.argsort(d, kind="stable")[:3]])
        got, _ = cluster_images(spec, store, v)
        assert len(members) > 3 and np.array_equal(got, source(spec, "reference").load(want))
