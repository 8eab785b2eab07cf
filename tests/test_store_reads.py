"""What tasks read and annotate through :class:`FeatureStore` instead of its Zarr group: rows in any
order, whole groups, an all-zero check that stops early, node attributes; guarded against
unfinished stages in a read-only store, and retried on transient errors like every store call."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import zarr

from repint.storage import FeatureStore, RetryPolicy, StoreError
from repint.storage.layout import EVALUATE, INGEST, INTERPRET

N, CHUNK = 10, 4


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    store = FeatureStore(str(tmp_path / "s.zarr"))
    ingest = INGEST.of("reference")
    store.prepare(ingest, "a" * 16, {"N": N, "K": 2, "h": 1, "w": 1, "C": 3, "chunk": CHUNK})
    store.write_region(ingest["features"], slice(0, N), np.arange(N * 2, dtype=np.float32).reshape(N, 2, 1, 1))
    store.write(ingest["ids"], np.asarray([f"img-{i}" for i in range(N)], dtype=str))
    for unit in range(3):
        store.mark_unit_done(ingest.name, unit)
    store.finish_stage(ingest.name)
    return store


def test_read_rows_in_any_order(store):
    feats = store.read("reference/features")
    for rows in ([7, 1, 7, 0], [9], np.array([3, 2, 1, 0, 0, 9]), [5] * 3):
        np.testing.assert_array_equal(store.read_rows("reference/features", np.asarray(rows)), feats[rows])
    empty = store.read_rows("reference/features", np.array([], dtype=np.int64))
    assert empty.shape == (0, 2, 1, 1) and empty.dtype == np.float32
    assert store.read_rows("reference/ids", np.array([2, 0])).tolist() == ["img-2", "img-0"]
    assert store.read_rows("reference/ids", np.array([], dtype=int)).shape == (0,)
    with pytest.raises(StoreError, match="has no array 'reference/nope'"):
        store.read_rows("reference/nope", np.array([0]))
    with pytest.raises(TypeError, match="rows are indices, not a mask"):
        store.read_rows("reference/ids", np.zeros(N, bool))


def test_read_group_update_and_read_attributes(store):
    group = INTERPRET.of("RI")["c0"]
    store.write(f"{group}/channel_weights", np.ones((2, 3)))
    store.write(f"{group}/order", np.arange(3))
    store.write(f"{group}/nested/deeper", np.zeros(1))
    got = store.read_group(group)
    assert sorted(got) == ["channel_weights", "order"]  # directly under the group only
    np.testing.assert_array_equal(got["order"], np.arange(3))
    with pytest.raises(StoreError, match="is an array, not a group"):
        store.read_group(f"{group}/order")
    store.update_attrs(group, mAD=1.5, n=3)
    store.update_attrs(group, n=4)
    store.update_attrs(f"{group}/order", note="x")
    assert store.node_attrs(group) == {"mAD": 1.5, "n": 4}
    assert store.node_attrs(f"{group}/order") == {"note": "x"}
    store.update_attrs("", extra=1)
    assert store.node_attrs("")["extra"] == 1 and "store_id" in store.node_attrs("")
    with pytest.raises(StoreError, match="has no group or array 'nothing/here'"):
        store.update_attrs("nothing/here", a=1)


def test_all_zero_reads_until_the_first_non_zero(store):
    store.create("z", (N, 3), "f4", (CHUNK, 3), fill_value=0)
    reads = []
    retry = store._retry
    store._retry = lambda what, fn: (reads.append(what), retry(what, fn))[1]  # type: ignore[method-assign]
    assert store.all_zero("z", CHUNK)
    assert len(reads) == 3
    store.write_region("z", slice(5, 6), np.ones((1, 3)))
    reads.clear()
    assert not store.all_zero("z", CHUNK)
    assert len(reads) == 2  # rows 0..3, then 4..7 with the non-zero: stopped there
    assert not store.all_zero("reference/features", 3)


def test_reads_of_an_unfinished_stage_are_refused_read_only(store, tmp_path):
    stage = EVALUATE.of("RI")
    store.prepare(stage, "e" * 16, {"N": 6, "chunk": CHUNK})
    store.update_attrs(stage.group, mAD=1.0)
    store.mark_unit_done(stage.name, 0)
    reader = FeatureStore(str(tmp_path / "s.zarr"), mode="r")
    for read in (lambda **kw: reader.read_rows(stage["y"], np.array([0]), **kw),
                 lambda **kw: reader.read_group(stage.group, **kw),
                 lambda **kw: reader.all_zero(stage["y"], 2, **kw),
                 lambda **kw: reader.node_attrs(stage.group, **kw)):
        with pytest.raises(StoreError, match=r"belongs to the stage 'evaluate-RI', which is not complete \(1/2"):
            read()
        read(allow_incomplete=True)
    assert reader.read_rows("reference/features", np.array([1])).shape == (1, 2, 1, 1)  # complete: readable
    assert store.node_attrs(stage.group) == {"mAD": 1.0}  # the writer reads what it writes


def test_reads_are_retried_on_transient_errors(store, monkeypatch):
    store.retry = RetryPolicy(attempts=3, base=0.001)
    failed: set[str] = set()
    get = zarr.storage.LocalStore.get

    async def flaky(self, key, *args, **kwargs):  # every object fails once with a transient error
        if "/c/" in key and key not in failed:
            failed.add(key)
            raise OSError(errno.EBUSY, "503 Service Unavailable")
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", flaky)
    assert store.read_rows("reference/features", np.array([9, 0])).shape == (2, 2, 1, 1)
    assert not store.all_zero("reference/features", CHUNK)
    assert failed


def test_a_view_slices_through_the_store(store):
    feats = store.read("reference/features")
    view = store.view("reference/features")
    assert view.shape == (N, 2, 1, 1) and len(view) == N
    np.testing.assert_array_equal(view[3], feats[3])
    np.testing.assert_array_equal(view[2:7], feats[2:7])
    from repint.ranking import euclidean_neighbours

    # ψ of image i is (2i, 2i+1): the nearest to image 4 are 3 and 5 (equal distance), then 2 and 6
    assert euclidean_neighbours(view, 4, top=4, block=3).tolist() == [3, 5, 2, 6]


def test_prepare_makes_the_arrays_the_tasks_always_made(tmp_path):
    """Chunks of runtime.chunk_size images even for a smaller set, the layout's dtypes and fill values."""
    store = FeatureStore(str(tmp_path / "p.zarr"))
    ingest = INGEST.of("unseen")
    assert store.prepare(ingest, "b" * 16, {"N": 10, "K": 2, "h": 3, "w": 3, "C": 4, "chunk": 256}) == [0]
    feats, logits, preds = (store.root[ingest[a]] for a in ("features", "logits", "predictions"))
    assert feats.shape == (10, 2, 3, 3) and feats.chunks == (256, 2, 3, 3) and feats.dtype == np.float32
    assert logits.chunks == (256, 4) and preds.dtype == np.int64 and preds.fill_value == -1
    assert "unseen/ids" not in store  # written whole by the task
    assert store.prepare(ingest, "b" * 16, {"N": 10, "K": 2, "h": 3, "w": 3, "C": 4, "chunk": 256}) == [0]
    evaluate = EVALUATE.of("RI.orient-false")
    assert store.prepare(evaluate, "c" * 16, {"N": 10, "chunk": 4}) == [0, 1, 2]
    y = store.root[evaluate["y"]]
    assert y.chunks == (4,) and np.isnan(y.fill_value) and store.root[evaluate["covered"]].dtype == bool


def test_a_variant_stage_under_its_old_label_is_dropped(tmp_path):
    """Stores from before variants had keys hold `evaluation/RI[orient=false]` and its stage record;
    the next evaluation drops them (record first) and works under the key `RI.orient-false`."""
    from repint.tasks.stages import retire_label_stage
    from repint.variants import Variant

    store = FeatureStore(str(tmp_path / "old.zarr"))
    old = EVALUATE.of("RI[orient=false]")
    store.prepare(old, "d" * 16, {"N": 6, "chunk": CHUNK})
    assert old.name in store.attrs["stages"] and "evaluation/RI[orient=false]/y" in store
    keep = EVALUATE.of("RI")
    store.prepare(keep, "d" * 16, {"N": 6, "chunk": CHUNK})
    retire_label_stage(store, EVALUATE, Variant.parse("RI[orient=false]"))
    assert old.name not in store.attrs["stages"] and "evaluation/RI[orient=false]" not in store
    assert f"_done/{old.name}" not in store and keep.name in store.attrs["stages"] and "evaluation/RI/y" in store
    assert not store.drop_stage(old.name, old.reset_paths)  # nothing left to drop
    retire_label_stage(store, EVALUATE, Variant.parse("RI"))  # a plain method's key is its label: kept
    assert "evaluation/RI/y" in store
