"""The store's stage and completion-record semantics, and what a failed run leaves behind."""

from __future__ import annotations

import numpy as np
import pytest

from repint.config import Config
from repint.storage import FeatureStore, StoreError


def test_stage_lifecycle_resume_and_reset(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"))
    store.begin_stage("ingest-reference", "fp1", 3, arrays=["reference/features"])
    store.create("reference/features", (6, 2), "f4", (2, 2), fill_value=0)
    store.root["reference/features"][0:2] = 1.0
    store.mark_unit_done("ingest-reference", 0)
    assert store.pending_units("ingest-reference") == [1, 2]
    with pytest.raises(StoreError, match="still misses units \\[1, 2\\]"):
        store.finish_stage("ingest-reference")
    with pytest.raises(StoreError, match="not complete"):
        store.require_complete("ingest-reference")
    epoch = store.attrs["stages"]["ingest-reference"]["epoch"]

    # resume with the same inputs: finished units and their data are kept, the epoch too
    store.begin_stage("ingest-reference", "fp1", 3, arrays=["reference/features"])
    assert store.pending_units("ingest-reference") == [1, 2]
    assert store.read("reference/features")[0].tolist() == [1.0, 1.0]
    assert store.attrs["stages"]["ingest-reference"]["epoch"] == epoch
    for unit in (1, 2):
        store.mark_unit_done("ingest-reference", unit)
    store.finish_stage("ingest-reference")
    assert store.stage_complete("ingest-reference", "fp1")
    assert not store.stage_complete("ingest-reference", "fp2")

    # other inputs: the stage's arrays and records are deleted before anything is written
    store.begin_stage("ingest-reference", "fp2", 3, arrays=["reference/features"])
    assert "reference/features" not in store
    assert store.pending_units("ingest-reference") == [0, 1, 2]
    assert store.attrs["stages"]["ingest-reference"]["epoch"] != epoch
    assert not store.attrs["stages"]["ingest-reference"]["complete"]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="No RepInt store"):
        FeatureStore(str(tmp_path / "absent.zarr"), mode="r")


def test_layout_version_is_checked(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"))
    store.set_attrs(layout_version=99)
    with pytest.raises(StoreError, match="layout version 99"):
        FeatureStore(str(tmp_path / "s.zarr"))


def test_interrupted_ingest_is_not_trusted_and_resumes(tmp_path, repint_cache):
    """An ingest that stops after its first chunk leaves a stage no later step trusts; the next
    run writes only the missing chunks, and the result equals an uninterrupted ingest."""
    from repint.flows.spec import build_spec
    from repint.tasks.centres import compute_centres
    from repint.tasks.ingest import ingest_chunk, prepare_ingest
    from repint.tasks.stages import finish_stage
    from repint.tasks.train import train_model

    cfg = Config()
    cfg.data.limit = 100
    cfg.runtime.chunk_size = 32
    cfg.train.epochs = 1
    spec0 = build_spec(cfg, tmp_path / "a")
    meta = train_model.fn(spec0.reference, None, "vgg-small", 32, (0.5,) * 3, (0.25,) * 3, cfg.train)
    cfg.model.checkpoint = meta["checkpoint"]

    spec = build_spec(cfg, tmp_path / "a")
    info = prepare_ingest.fn(spec, "reference")
    assert info["pending"] == [0, 1, 2, 3]
    ingest_chunk.fn(spec, "reference", 0)  # ... and the run dies here
    with pytest.raises(StoreError, match="still misses units \\[1, 2, 3\\]"):
        finish_stage.fn(spec, "ingest-reference")
    with pytest.raises(StoreError, match="'ingest-reference' is not complete"):
        compute_centres.fn(spec)

    store = FeatureStore(spec.store)
    first = store.read("reference/features", slice(0, 32)).copy()
    info = prepare_ingest.fn(spec, "reference")
    assert info["pending"] == [1, 2, 3]
    for c in info["pending"]:
        ingest_chunk.fn(spec, "reference", c)
    finish_stage.fn(spec, "ingest-reference")
    np.testing.assert_array_equal(store.read("reference/features", slice(0, 32)), first)

    clean = build_spec(cfg, tmp_path / "b")
    for c in prepare_ingest.fn(clean, "reference")["pending"]:
        ingest_chunk.fn(clean, "reference", c)
    other = FeatureStore(clean.store)
    for name in ("features", "logits", "predictions"):
        np.testing.assert_array_equal(store.read(f"reference/{name}"), other.read(f"reference/{name}"))
