"""The per-process cache of data sources is bounded and keeps the most recently used ones."""

import numpy as np

from repint import data


def _npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.random((3, 3, 8, 8), dtype=np.float32), labels=np.array([0, 1, 0]))
    return str(path)


def test_the_cache_keeps_at_most_its_bound_and_the_latest(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CACHE", type(data._CACHE)())
    monkeypatch.setattr(data, "CACHED_SOURCES", 4)
    paths = [_npz(tmp_path / f"s{i}.npz", i) for i in range(7)]
    first = data.source_from_spec({"kind": "arrays", "path": paths[0]})
    assert data.source_from_spec({"kind": "arrays", "path": paths[0]}) is first  # a hit: the same object
    for p in paths[1:]:
        data.source_from_spec({"kind": "arrays", "path": p})
        assert len(data._CACHE) <= 4
    latest = data.source_from_spec({"kind": "arrays", "path": paths[-1]})
    assert data.source_from_spec({"kind": "arrays", "path": paths[-1]}) is latest
    again = data.source_from_spec({"kind": "arrays", "path": paths[0]})  # evicted long ago: built anew
    assert again is not first and np.array_equal(again.load(np.arange(3)), first.load(np.arange(3)))
