"""The Zarr (v3) feature store: layout, create/open, chunk writes with completion records, stages.

Layout (see ``docs/store-layout.md``)::

    store.zarr/                       attrs: layout_version, store_id, code_version, model, data,
                                             params, stages{name: {fingerprint, complete}}, skipped
      {reference,unseen}/features     [N, K, h, w] float32   ψ(x), chunked along images
      {reference,unseen}/logits       [N, C]       float32
      {reference,unseen}/predictions  [N]          int64     argmax of logits
      {reference,unseen}/labels       [N]          int64     -1 when unknown (never used to interpret)
      {reference,unseen}/ids          [N]          str
      centres/vectors                 [V, D]       float32   k-means centres on flattened ψ
      centres/labels                  [N]          int64     cluster of each reference image
      centres/input_index             [V]          int64     reference image nearest each centre
      boundaries/W                    [M, D]       float32
      boundaries/b, source, owner, top2                       (owner -1 = shared by every input)
      signs/{reference,unseen}        [N, ceil(M/8)] uint8   packed sign bits, little bit order
      polytopes/...                   per centre: boundary ids, orientation, covered, tau, ...
      interpretations/<method>/c<v>/* per centre: e.g. channel_weights
      evaluation/<method>/*           per unseen image: centre, covered, y, y_masked
      _done/<stage>                   [n_units] bool  written *after* each unit's data

A stage (``ingest``, ``boundaries``, ...) is trusted only once ``stages[name].complete`` is true
for the current fingerprint of its inputs; a run that dies leaves it incomplete, and the next run
redoes only the units whose completion record is missing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr

__all__ = ["LAYOUT_VERSION", "FeatureStore", "StoreError", "fingerprint_params"]

LAYOUT_VERSION = 1


class StoreError(RuntimeError):
    """The store is missing, incomplete for what is asked, or from an incompatible layout."""


def fingerprint_params(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """A handle on one Zarr group at a path or fsspec URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, mode: str = "a") -> None:
        self.url = url
        self.storage_options = storage_options or {}
        kwargs: dict[str, Any] = {"mode": mode}
        if "://" in url and not url.startswith("file://"):
            kwargs["storage_options"] = self.storage_options
        try:
            self.root = zarr.open_group(url, zarr_format=3, **kwargs)
        except FileNotFoundError as exc:
            raise StoreError(f"No RepInt store at {url}. Run `repint run` (or the ingest flow) first.") from exc
        if mode != "r" and "store_id" not in self.root.attrs:
            self.root.attrs.update({"layout_version": LAYOUT_VERSION, "store_id": uuid.uuid4().hex,
                                    "stages": {}})
        if self.root.attrs.get("layout_version", LAYOUT_VERSION) != LAYOUT_VERSION:
            raise StoreError(f"Store {url} has layout version {self.root.attrs.get('layout_version')}, "
                             f"this RepInt reads {LAYOUT_VERSION}.")

    # attributes -----------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def store_id(self) -> str:
        return str(self.root.attrs["store_id"])

    def set_attrs(self, **values: Any) -> None:
        self.root.attrs.update(values)

    # stages ---------------------------------------------------------------------------------
    def stage_complete(self, stage: str, fingerprint: str) -> bool:
        info = self.root.attrs.get("stages", {}).get(stage)
        return bool(info and info.get("complete") and info.get("fingerprint") == fingerprint)

    def begin_stage(self, stage: str, fingerprint: str, n_units: int, arrays: Iterable[str] = ()) -> None:
        """Start (or resume) a stage. A different fingerprint resets the stage: its arrays and its
        completion records are deleted, so nothing from other inputs is trusted."""
        stages = dict(self.root.attrs.get("stages", {}))
        info = stages.get(stage)
        done_path = f"_done/{stage}"
        epoch = (info or {}).get("epoch")
        if info is None or info.get("fingerprint") != fingerprint or done_path not in self.root \
                or self.root[done_path].shape != (n_units,) or not epoch:
            for path in [*arrays, done_path]:
                if path in self.root:
                    del self.root[path]
            # one chunk per unit: concurrent writers of different units never touch the same object
            self.root.create_array(done_path, shape=(n_units,), chunks=(1,), dtype=bool, fill_value=False)
            epoch = uuid.uuid4().hex[:12]  # a reset stage invalidates every cached unit result
        stages[stage] = {"fingerprint": fingerprint, "complete": False, "epoch": epoch}
        self.root.attrs["stages"] = stages

    def pending_units(self, stage: str) -> list[int]:
        done = self.root[f"_done/{stage}"][:]
        return [int(i) for i in np.flatnonzero(~done)]

    def mark_unit_done(self, stage: str, unit: int) -> None:
        self.root[f"_done/{stage}"][unit] = True

    def finish_stage(self, stage: str) -> None:
        missing = self.pending_units(stage)
        if missing:
            raise StoreError(f"Stage {stage!r} still misses units {missing[:10]}; not marking it complete.")
        stages = dict(self.root.attrs.get("stages", {}))
        stages[stage]["complete"] = True
        self.root.attrs["stages"] = stages

    def require_complete(self, stage: str) -> None:
        info = self.root.attrs.get("stages", {}).get(stage)
        if not (info and info.get("complete")):
            raise StoreError(f"Store {self.url}: stage {stage!r} is not complete; run it first.")

    # arrays ---------------------------------------------------------------------------------
    def create(self, path: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
               fill_value: Any = None) -> zarr.Array:
        """Create (replacing) an array. ``chunks`` defaults to the whole array."""
        if path in self.root:
            del self.root[path]
        chunks = chunks or tuple(max(s, 1) for s in shape)
        return self.root.create_array(path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value)

    def require(self, path: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
                fill_value: Any = None) -> zarr.Array:
        """Open ``path`` if it exists with this shape and dtype, else create it."""
        if path in self.root:
            arr = self.root[path]
            if isinstance(arr, zarr.Array) and arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
        return self.create(path, shape, dtype, chunks, fill_value)

    def write(self, path: str, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        """Write a whole (small) array."""
        data = np.asarray(data)
        self.create(path, data.shape, data.dtype if data.dtype.kind != "U" else str, chunks)[...] = data

    def read(self, path: str, selection: Any = slice(None)) -> np.ndarray:
        if path not in self.root:
            raise StoreError(f"Store {self.url} has no array {path!r}.")
        return np.asarray(self.root[path][selection])

    def __contains__(self, path: str) -> bool:
        return path in self.root

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.root[path].shape)
