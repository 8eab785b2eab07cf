"""RI's variants (method.md): names, config validation, how a study plans them, and the case study's
Euclidean neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from repint.config import Config, ConfigError
from repint.methods import get_method
from repint.storage import FeatureStore
from repint.variants import Variant

overrides = st.fixed_dictionaries({}, optional={
    "q": st.integers(1, 10_000),
    "q_sampling": st.sampled_from(["reference-points", "boundary-search", "boundary-search-authors"]),
    "solver": st.sampled_from(["greedy", "authors"]), "orient": st.booleans()})


@given(overrides)
def test_variant_labels_round_trip_and_keys_are_safe_store_names(over):
    v = Variant.of("RI", over)
    assert Variant.parse(v.label) == v and v.settings == over
    assert (v.label == "RI") == (not over) and (v.key == "RI") == (not over)
    assert set(v.key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


@given(overrides, overrides)
def test_different_variants_have_different_keys(a, b):
    if a != b:
        assert Variant.of("RI", a).key != Variant.of("RI", b).key


def test_variant_label_reads_like_the_config():
    v = Variant.of("RI", {"q_sampling": "boundary-search", "orient": False})
    assert v.label == str(v) == "RI[q_sampling=boundary-search,orient=false]"
    assert v.key == "RI.q_sampling-boundary-search.orient-false"
    assert Variant.parse("Grad-CAM++") == Variant("Grad-CAM++") and Variant("Grad-CAM++").key == "Grad-CAM++"
    assert type(get_method("RI[orient=false]")).__name__ == "RI"
    with pytest.raises(ValueError, match="key=value"):
        Variant.parse("RI[orient]")
    with pytest.raises(ValueError, match="Unknown method 'Nope'"):
        get_method("Nope[orient=false]")


def test_a_variant_runs_with_its_overrides_validated():
    from repint.config import InterpretationConfig

    base = InterpretationConfig(q=40, seed=3)
    got = Variant.parse("RI[q=100,orient=false]").interpretation(base)
    assert (got.q, got.orient, got.seed, got.q_sampling) == (100, False, 3, "reference-points")
    assert Variant("RI").interpretation(base) is base
    with pytest.raises(ValueError, match="q_sampling"):
        Variant.parse("RI[q_sampling=nowhere]").interpretation(base)


@pytest.mark.parametrize(("evaluation", "message"), [
    ("methods: [RI, Grad-KAM]", "unknown method 'Grad-KAM'; available: .*Grad-CAM"),
    ("methods: ['RI[seed=3]']", "a variant sets some of"),
    ("variants: [{seed: 3}]", "evaluation.variants"),  # a variant that changes nothing measured
    ("variants: [{q: 0}]", "greater than or equal to 1"),
    ("methods: ['RI[orient=maybe]']", "'RI\\[orient=maybe\\]': orient: Input should be a valid boolean"),
    ("methods: ['RI[q=100]']", "changes Q, which needs a store of its own: .*variants: \\[\\{q: 100\\}\\]"),
    ("methods: ['RI[solver=authors]']",
     "changes the polytopes, which needs a store of its own: .*variants: \\[\\{solver: authors\\}\\]"),
    ("methods: ['RI[q=9,solver=authors]']", "changes Q and the polytopes, which needs a store of its own"),
    ("variants: [{solver: lazy}]", "solver"),
])
def test_config_rejects_unknown_methods_and_variants(tmp_path, evaluation, message):
    from repint.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"evaluation:\n  {evaluation}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_method_labels_are_written_once_as_their_labels():
    from repint.config import EvaluationConfig

    methods = EvaluationConfig(methods=["RI", "RI[orient=False]", "RI[orient=false]"]).methods
    assert methods == ["RI", "RI[orient=false]"]


def test_study_plans_orientation_on_the_run_store_and_q_variants_in_their_own(tmp_path):
    from repint.flows.spec import build_spec
    from repint.flows.studies import run_spec, variant_plan

    cfg = Config.model_validate({"data": {"kind": "digits", "limit": 60}, "evaluation": {
        "methods": ["RI", "Grad-CAM"], "variants": [{"q_sampling": "boundary-search"}, {"orient": False}]}})
    spec = build_spec(cfg, tmp_path / "out")
    main, own = variant_plan(spec)
    assert main.evaluation.methods == ["RI", "Grad-CAM", "RI[orient=false]"]
    assert main.store == spec.store
    (v,) = own
    assert v.evaluation.methods == ["RI[q_sampling=boundary-search]"]
    assert v.interpretation.q_sampling == "boundary-search" and v.store.endswith("store-variant0.zarr")
    r2 = run_spec(v, 2, 5)
    assert r2.store.endswith("store-variant0-run2.zarr") and r2.interpretation.seed == 2
    assert r2.out_dir.endswith("variant-0/run-2")


def test_the_authors_solver_is_a_variant_with_a_store_of_its_own(tmp_path):
    from repint.flows.spec import build_spec
    from repint.flows.studies import variant_plan
    from repint.tasks.solve import solver_params
    from repint.variants import OWN_STORE_KEYS, VARIANT_KEYS

    assert set(VARIANT_KEYS) - set(OWN_STORE_KEYS) == {"orient"}  # only orient stays on the run's store
    cfg = Config.model_validate({"data": {"kind": "digits", "limit": 60}, "evaluation": {
        "methods": ["RI"], "variants": [{"solver": "authors"}, {"orient": False}]}})
    assert cfg.interpretation.solver == "greedy"  # the paper's
    spec = build_spec(cfg, tmp_path / "out")
    main, (v,) = variant_plan(spec)
    assert main.evaluation.methods == ["RI", "RI[orient=false]"] and main.interpretation.solver == "greedy"
    assert v.evaluation.methods == ["RI[solver=authors]"] and v.interpretation.solver == "authors"
    assert v.store.endswith("store-variant0.zarr")
    # the polytopes' fingerprint names the solver only when it is not the default
    assert solver_params(main) == () and solver_params(v) == ("authors",)


def test_runs_resample_a_per_class_reference_set(tmp_path):
    from repint.flows.studies import run_spec
    from repint.tasks.runspec import RunSpec

    base = dict(store=str(tmp_path / "s.zarr"), out_dir=str(tmp_path), dataset="d", unseen={}, model={},
                evaluation={}, runtime={}, storage_options={}, interpretation={"seed": 7})
    sampled = RunSpec(reference={"kind": "imagefolder", "per_class": 10, "seed": 7}, **base)
    assert run_spec(sampled, 3, 5).reference["seed"] == 10
    whole = RunSpec(reference={"kind": "imagefolder", "per_class": None, "seed": 7}, **base)
    assert run_spec(whole, 3, 5).reference["seed"] == 7  # all images: nothing to resample


def test_euclidean_neighbours_exclude_the_input_and_read_in_blocks(tmp_path):
    from repint.tasks.casestudy import euclidean_neighbours

    store = FeatureStore(str(tmp_path / "s.zarr"))
    # ψ of 7 images [7, 1, 2, 1]: distances from image 2 (at 0, 0): 5, 1, 0, 4, 2, 3, 1
    pts = np.array([[5, 0], [1, 0], [0, 0], [0, 4], [2, 0], [0, 3], [0, 1]], dtype=np.float32)
    store.write("reference/features", pts.reshape(7, 1, 2, 1))
    np.testing.assert_array_equal(euclidean_neighbours(store, 2, top=4, block=3), [1, 6, 4, 5])


def test_examples_demo_yaml_is_what_repint_demo_runs():
    from pathlib import Path

    from repint.config import demo_config, load_config

    path = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
    assert load_config(path) == demo_config()
