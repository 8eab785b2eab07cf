"""`repint verify` checks every stage the layout declares (``storage/layout.py``), not only the ones
of test_store_reliability's small store: a sound store of every stage passes, and each kind of
damage to a later stage (a dimension that disagrees, a wrong dtype, a centre without its
interpretation, too few completion records) is named with its array."""

from __future__ import annotations

import numpy as np
import pytest

from repint.signs import sign_bits
from repint.storage import FeatureStore
from repint.storage.layout import BOUNDARIES, CENTRES, EVALUATE, INGEST, INTERPRET, POLYTOPES, SIGNS, SPLITS, Stage
from repint.storage.verify import stage_arrays, verify_store

N, CHUNK, K, H, W, C, M, V, Q = 10, 4, 2, 2, 2, 3, 11, 4, 5
SIZES = {"N": N, "K": K, "h": H, "w": W, "C": C, "chunk": CHUNK, "M": M, "V": V, "Q": Q}
EVAL_SIZES = {"F": 3, "G": 4, "T": 9, "th": 4, "tw": 4}  # kept shares, curves, their points, thumbnails


def finish(store: FeatureStore, stage: Stage) -> None:
    """Every chunk of the stage's arrays written (its fill values where nothing else is), every unit done."""
    for path, spec in stage.arrays:
        if spec.per_unit and path in store:
            store.write_region(path, Ellipsis, store.read(path))
    for unit in store.pending_units(stage.name):
        store.mark_unit_done(stage.name, unit)
    store.finish_stage(stage.name)


def whole(store: FeatureStore, stage: Stage, arrays: dict[str, np.ndarray]) -> None:
    store.prepare(stage, "f" * 16, SIZES)
    for name, value in arrays.items():
        store.write(stage[name], value)
    finish(store, stage)


def full_store(path: str) -> FeatureStore:
    """Every stage of the layout, complete, with data that agrees (sign bits recomputable)."""
    rng = np.random.default_rng(1)
    store = FeatureStore(path)
    store.set_attrs(model={"architecture": "vgg-small"}, **{f"data_fingerprint_{s}": "d" * 16 for s in SPLITS})
    w, b = rng.normal(size=(M, K * H * W)).astype(np.float32), rng.normal(size=M)
    whole(store, BOUNDARIES.of(), {"W": w, "b": b, "top2": np.zeros((M, 2), np.int64),
                                   "source": np.zeros(M, np.int64), "owner": -np.ones(M, np.int64)})
    for split in SPLITS:
        ingest, signs = INGEST.of(split), SIGNS.of(split)
        store.prepare(ingest, "f" * 16, SIZES)
        feats = rng.normal(size=(N, K, H, W)).astype(np.float32)
        logits = rng.normal(size=(N, C)).astype(np.float32)
        store.write_region(ingest["features"], slice(None), feats)
        store.write_region(ingest["logits"], slice(None), logits)
        store.write_region(ingest["predictions"], slice(None), logits.argmax(1))
        store.write(ingest["labels"], np.zeros(N, np.int64))
        store.write(ingest["ids"], np.asarray([f"{split}-{i}" for i in range(N)], dtype=str))
        finish(store, ingest)
        store.prepare(signs, "f" * 16, SIZES)
        store.write_region(signs["signs"], slice(None), sign_bits(feats, w, b))
        finish(store, signs)
    whole(store, CENTRES.of(), {"vectors": np.zeros((V, K * H * W), np.float32), "labels": np.zeros(N, np.int64),
                                "input_index": np.arange(V), "predicted_class": np.zeros(V, np.int64)})
    store.prepare(POLYTOPES.of(), "f" * 16, SIZES)
    finish(store, POLYTOPES.of())
    interpret = INTERPRET.of("RI")
    store.prepare(interpret, "f" * 16, SIZES)
    for v in range(V):
        store.write(interpret[f"c{v}/channel_weights"], np.ones((2, K)))
    finish(store, interpret)
    store.prepare(EVALUATE.of("RI"), "f" * 16, {**SIZES, **EVAL_SIZES})
    finish(store, EVALUATE.of("RI"))
    return store


def test_a_store_of_every_stage_is_sound(tmp_path):
    full_store(str(tmp_path / "s.zarr"))
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert report.ok, report.text()
    assert set(report.stages) == {"boundaries", "centres", "polytopes", "interpret-RI", "evaluate-RI",
                                  *(f"{k}-{s}" for k in ("ingest", "signs") for s in SPLITS)}
    assert report.rows_recomputed == 2 * N
    assert sorted(stage_arrays("interpret-RI", FeatureStore(str(tmp_path / "s.zarr")).root)) == [
        f"interpretations/RI/c{v}/channel_weights" for v in range(V)]
    assert stage_arrays("signs-unseen", None) == ["signs/unseen"]  # type: ignore[arg-type]
    assert stage_arrays("no-such-stage", None) == []  # type: ignore[arg-type]


def test_evaluations_of_other_metric_settings_are_each_sound(tmp_path):
    """The evaluation's dimensions (kept shares, curves, thumbnails) are each stage's own: a method
    evaluated under other settings (a stage left from an earlier config) is no mismatch, but a
    stage whose own arrays disagree is."""
    store = full_store(str(tmp_path / "s.zarr"))
    other = EVALUATE.of("Grad-CAM")
    store.prepare(other, "f" * 16, {**SIZES, "F": 1, "G": 0, "T": 0, "th": 0, "tw": 0})
    finish(store, other)
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert report.ok, report.text()
    store.write("evaluation/Grad-CAM/road_keep", np.zeros((N, 2)))
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert [(f.path, f.message) for f in report.errors] == [
        ("evaluation/Grad-CAM/road_keep", "shape [10, 2] does not match the other arrays (expected [10, 1])")]


def test_an_evaluation_of_before_the_metrics_is_sound_with_warnings(tmp_path):
    """A store whose evaluate stage was completed before the faithfulness metrics existed lacks their
    arrays: verify warns (a run evaluates the stage again, its fingerprint changed) but finds no error."""
    store = full_store(str(tmp_path / "s.zarr"))
    for name in ("y_kept", "road_keep", "road_remove", "curves", "thumb"):
        del store.root[f"evaluation/RI/{name}"]
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert report.ok, report.text()
    assert sorted(f.path for f in report.findings if f.level == "warning" and "before this array" in f.message) == [
        f"evaluation/RI/{name}" for name in ("curves", "road_keep", "road_remove", "thumb", "y_kept")]


@pytest.mark.parametrize("damage, path, message", [
    (lambda s: s.write("polytopes/tau", np.zeros(V + 1, np.int64)), "polytopes/tau",
     f"shape [{V + 1}] does not match the other arrays (expected [{V}])"),
    (lambda s: s.write("polytopes/covered", np.zeros((V, N - 2), bool)), "polytopes/covered",
     f"shape [{V}, {N - 2}] does not match the other arrays (expected [{V}, {N}])"),
    (lambda s: s.write("signs/unseen", np.zeros((N, 1), np.uint8), chunks=(CHUNK, 1)), "signs/unseen",
     f"shape [{N}, 1] does not match the other arrays (expected [{N}, 2])"),
    (lambda s: s.write("unseen/features", np.zeros((N, K, H, W + 1), np.float32), chunks=(CHUNK, K, H, W + 1)),
     "unseen/features",
     f"shape [{N}, {K}, {H}, {W + 1}] does not match the other arrays (expected [*, {K}, {H}, {W}])"),
    (lambda s: s.write("centres/vectors", np.zeros((V, 3), np.float32)), "centres/vectors",
     f"shape [{V}, 3] does not match the other arrays (expected [*, {K * H * W}])"),
    (lambda s: s.write("evaluation/RI/y", np.zeros(N, np.int64), chunks=(CHUNK,)), "evaluation/RI/y",
     "dtype int64 is not the layout's (f)"),
    (lambda s: s.root.__delitem__("interpretations/RI/c2"), "interpretations/RI", "no interpretation of centres [2]"),
    (lambda s: s.write("evaluation/RI/centre", np.zeros(N, np.int64), chunks=(N,)) or
     s.write("evaluation/RI/covered", np.zeros(N, bool), chunks=(N,)) or
     [s.write(f"evaluation/RI/{a}", np.zeros(N), chunks=(N,)) for a in ("y", "y_masked", "kept_fraction")],
     "_done/evaluate-RI", "3 units recorded, the stage's arrays have 1 chunks"),
])
def test_damage_to_any_stage_is_named(tmp_path, damage, path, message):
    store = full_store(str(tmp_path / "s.zarr"))
    damage(store)
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert [(f.path, f.message) for f in report.errors] == [(path, message)], report.text()
