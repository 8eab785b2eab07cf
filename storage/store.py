"""The Zarr (v3) feature store: create/open, stages with completion records, chunk writes and reads.

The layout (every stage, its arrays, shapes and units) is declared once in
:mod:`repint.storage.layout` and described for readers in ``docs/store-layout.md``; the root's
attributes hold ``layout_version``, ``store_id``, ``code_version``, ``model``, ``data``, ``params``,
``stages{name: {fingerprint, complete, epoch}}`` and ``skipped``, and ``_done/<stage>`` the
``[n_units]`` completion records, each written *after* its unit's data.

A stage (``ingest-reference``, ``boundaries``, ...) is trusted only once ``stages[name].complete``
is true for the current fingerprint of its inputs; a run that dies leaves it incomplete, and the
next run redoes only the units whose completion record is missing (:meth:`FeatureStore.prepare`).

The store can live on object storage (``s3://bucket/path.zarr``, any fsspec URL; see
``docs/object-storage.md``). Credentials in ``storage_options`` are kept as pydantic ``SecretStr``
(:func:`repint.storage.protect_secrets`) and revealed only in the call that hands them to fsspec. A
store that cannot be reached is a :class:`StoreAccessError` when it is opened, saying what is
wrong and what to do (:mod:`repint.storage.access`). Every store operation is retried on transient
errors (:mod:`repint.storage.errors`); the write lock is :mod:`repint.storage.lock`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import zarr

from repint.storage.access import _access_error, _scrub
from repint.storage.errors import RetryPolicy, StoreAccessError, StoreError, retrying
from repint.storage.layout import Stage, stage_of
from repint.storage.lock import StoreLock
from repint.storage.secrets import protect_secrets, redact_url, reveal_secrets, split_url_credentials

__all__ = ["FAST_COMPRESSORS", "LAYOUT_VERSION", "FeatureStore", "fingerprint_params"]

LAYOUT_VERSION = 1

# The codec of the feature arrays (ψ of every image, the store's bulk): zstd level 1 compresses ReLU
# features as well as Zarr's default, level 3 (2.35x vs 2.33x on cats vs dogs' 64x16x16 ψ), writes
# 3.4x and reads 2x faster (docs/scaling.md). The values are the same; only the codec differs.
FAST_COMPRESSORS = (zarr.codecs.ZstdCodec(level=1),)
T = TypeVar("T")

# The root's attributes are one document: two handles that update it at once from stale copies would
# lose one update. Within a process (concurrent prepare tasks in threads), updates are serialised per
# store and made to a fresh copy; across processes, only one (the flow's) writes the root.
_ROOT_LOCKS: dict[str, threading.Lock] = {}
_ROOT_LOCKS_GUARD = threading.Lock()


def _show(selection: Any) -> str:
    """``slice(0, 8)`` -> ``0:8``, for messages."""
    items = selection if isinstance(selection, tuple) else (selection,)
    return ", ".join(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
                     if isinstance(s, slice) else "..." if s is Ellipsis else str(s) for s in items)


def fingerprint_params(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """A handle on one Zarr group at a path or fsspec URL.

    ``storage_options`` go to fsspec (for ``s3://``: s3fs' ``endpoint_url``, ``key``, ``secret``,
    ``token``, ``client_kwargs``, ...); their credentials may be ``SecretStr``. ``url`` is the
    location with any user info redacted, fit for messages."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, mode: str = "a") -> None:
        url, options = split_url_credentials(str(url), storage_options)
        self.url = redact_url(url)
        self.storage_options = protect_secrets(options)
        self.mode = mode
        self.retry = RetryPolicy()
        kwargs: dict[str, Any] = {"mode": mode}
        remote = "://" in url and not url.startswith("file://")
        if remote:
            kwargs["storage_options"] = reveal_secrets(options)
        with _ROOT_LOCKS_GUARD:
            self._root_lock = _ROOT_LOCKS.setdefault(url, threading.Lock())
        try:
            self.root = zarr.open_group(url, zarr_format=3, **kwargs)
            if mode != "r" and "store_id" not in self.root.attrs:
                # every chunk is written, fill values too: a missing chunk object is then always damage
                self.root.attrs.update({"layout_version": LAYOUT_VERSION, "store_id": uuid.uuid4().hex,
                                        "stages": {}, "chunks_always_written": True})
        except Exception as exc:
            error = _access_error(url, self.url, kwargs.get("storage_options", {}), exc) if remote else None
            if error is not None:
                raise StoreAccessError(_scrub(str(error), options)) from None
            if isinstance(exc, FileNotFoundError):
                missing = StoreError(f"No RepInt store at {self.url}. Run `repint run` (or the ingest flow) first.")
                raise missing from (None if remote else exc)
            raise
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
        """Update the root's attributes."""
        self._update_root("updating the store's attributes", lambda attrs: values)

    def _update_root(self, what: str, change: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
        """Update the root's attributes with ``change(current)``, the current ones read afresh, one
        update of this store at a time in this process (see ``_ROOT_LOCKS``)."""
        def update() -> None:
            root = zarr.open_group(self.root.store, path=self.root.path, mode="r+", zarr_format=3)
            root.attrs.update(dict(change(dict(root.attrs))))
            self.root = root

        with self._root_lock:
            self._retry(what, update)

    def update_attrs(self, path: str, **values: Any) -> None:
        """Update the attributes of the group or array at ``path`` (the root's for ``""``)."""
        if not path.strip("/"):
            self.set_attrs(**values)
        elif path not in self.root:
            raise StoreError(f"Store {self.url} has no group or array {path!r}.")
        else:
            self._retry(f"updating the attributes of {path}", lambda: self.root[path].attrs.update(values))

    def node_attrs(self, path: str, *, allow_incomplete: bool = False) -> dict[str, Any]:
        """The attributes of the group or array at ``path`` (the root's for ``""``), guarded like
        :meth:`read`."""
        if not path.strip("/"):
            return self.attrs
        self._check_readable(path, allow_incomplete)
        return self._retry(f"reading the attributes of {path}", lambda: dict(self.root[path].attrs))

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return retrying(lambda: f"{what} of {self.url}", fn, self.retry)

    def lock_holder(self) -> dict[str, Any] | None:
        """The record of the run holding the store's write lock (host, pid, started, heartbeat), or
        None when no run holds it (or its lock cannot be read)."""
        try:
            return StoreLock(self.url, self.storage_options).holder()
        except Exception:
            return None

    def incomplete_stages(self) -> dict[str, str]:
        """Stages that were started and are not complete: ``{stage: "k/n units done"}``."""
        out = {}
        for stage, info in self.root.attrs.get("stages", {}).items():
            if info.get("complete"):
                continue
            try:
                done = np.asarray(self.root[f"_done/{stage}"][:])
                out[stage] = f"{int(done.sum())}/{done.size} units done"
            except Exception:
                out[stage] = "not started"
        return out

    # stages ---------------------------------------------------------------------------------
    def stage_complete(self, stage: str, fingerprint: str) -> bool:
        info = self.root.attrs.get("stages", {}).get(stage)
        return bool(info and info.get("complete") and info.get("fingerprint") == fingerprint)

    def _set_stage(self, what: str, stage: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> None:
        """``stages[stage] = change(stages.get(stage))`` on the current stage records."""
        self._update_root(what, lambda attrs: {"stages": {**attrs.get("stages", {}),
                                                          stage: change(attrs.get("stages", {}).get(stage))}})

    def begin_stage(self, stage: str, fingerprint: str, n_units: int, arrays: Iterable[str] = (),
                    reads: Mapping[str, str] | None = None) -> None:
        """Start (or resume) a stage. A different fingerprint resets the stage: its arrays and its
        completion records are deleted, so nothing from other inputs is trusted. ``reads``: the
        fingerprints of the stages it is computed from, recorded so that readers can tell a stage that
        a stopped rerun left behind its inputs."""
        info = self.root.attrs.get("stages", {}).get(stage)
        done_path = f"_done/{stage}"
        epoch = (info or {}).get("epoch")
        if info is None or info.get("fingerprint") != fingerprint or done_path not in self.root \
                or self.root[done_path].shape != (n_units,) or not epoch:
            if info is not None and info.get("complete"):
                # untrusted *before* anything is deleted: a crash in between leaves an incomplete stage,
                # never a complete one without its arrays
                self._set_stage(f"resetting stage {stage}", stage, lambda cur: {**(cur or info), "complete": False})

            def reset() -> None:
                for path in [*arrays, done_path]:
                    if path in self.root:
                        del self.root[path]
                # one chunk per unit: concurrent writers of different units never touch the same object
                self.root.create_array(done_path, shape=(n_units,), chunks=(1,), dtype=bool, fill_value=False)

            self._retry(f"resetting stage {stage}", reset)
            epoch = uuid.uuid4().hex[:12]  # a reset stage invalidates every cached unit result
        record = {"fingerprint": fingerprint, "complete": False, "epoch": epoch,
                  **({"reads": dict(reads)} if reads else {})}
        self._set_stage(f"starting stage {stage}", stage, lambda cur: record)

    def drop_stage(self, stage: str, paths: Iterable[str]) -> bool:
        """Forget ``stage``: its record first (a crash in between leaves arrays no stage vouches for,
        never a stage without its arrays), then ``paths`` and its completion records. False when the
        store holds none of them."""
        paths = [*paths, f"_done/{stage}"]
        if stage not in self.root.attrs.get("stages", {}) and not any(p in self.root for p in paths):
            return False
        self._update_root(f"forgetting stage {stage}", lambda attrs: {
            "stages": {k: v for k, v in attrs.get("stages", {}).items() if k != stage}})

        def delete() -> None:
            for path in paths:
                if path in self.root:
                    del self.root[path]

        self._retry(f"deleting the arrays of stage {stage}", delete)
        return True

    def prepare(self, stage: Stage, fingerprint: str, sizes: Mapping[str, int]) -> list[int]:
        """Start or resume ``stage`` for inputs of ``fingerprint`` and return its pending units
        (``[]`` when it is complete for them). Creates every array the layout declares for units to
        fill (``per_unit``), its shape and chunks from ``sizes`` (``{"N": ..., "chunk": ...}``; a chunk
        may be longer than its array, as ``runtime.chunk_size`` images are for a small set), its dtype,
        fill value and codec (:data:`FAST_COMPRESSORS` for the bulk features); a reset stage first
        loses its :attr:`Stage.reset_paths`."""
        if self.stage_complete(stage.name, fingerprint):
            return []
        stages = self.root.attrs.get("stages", {})
        reads = {name: stages[name]["fingerprint"] for name in stage.reads if name in stages}
        self.begin_stage(stage.name, fingerprint, stage.n_units(sizes), arrays=stage.reset_paths, reads=reads)
        for path, spec in stage.arrays:
            if spec.per_unit:
                shape = stage.resolve(spec.shape, sizes)
                chunks = stage.resolve(spec.chunks, sizes) if spec.chunks is not None else None
                chunks = None if chunks is None else tuple(max(1, c) for c in chunks)  # a zero-width array
                self.require(path, shape, spec.dtype, chunks, fill_value=spec.fill_value,
                             compressors=FAST_COMPRESSORS if spec.fast else "auto")
        return self.pending_units(stage.name)

    def pending_units(self, stage: str) -> list[int]:
        done = self._retry(f"reading the completion records of {stage}", lambda: self.root[f"_done/{stage}"][:])
        return [int(i) for i in np.flatnonzero(~done)]

    def mark_unit_done(self, stage: str, unit: int) -> None:
        """The unit's completion record; written after (never before) the unit's data."""
        def mark() -> None:
            self.root[f"_done/{stage}"][unit] = True

        self._retry(f"recording unit {unit} of {stage} as done", mark)

    def finish_stage(self, stage: str) -> None:
        missing = self.pending_units(stage)
        if missing:
            raise StoreError(f"Stage {stage!r} still misses units {missing[:10]}; not marking it complete.")
        self._set_stage(f"completing stage {stage}", stage, lambda cur: {**(cur or {}), "complete": True})

    def require_complete(self, stage: str) -> None:
        info = self.root.attrs.get("stages", {}).get(stage)
        if not (info and info.get("complete")):
            raise StoreError(f"Store {self.url}: stage {stage!r} is not complete; run it first.")

    # writing arrays -------------------------------------------------------------------------
    def create(self, path: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
               fill_value: Any = None, compressors: Any = "auto") -> zarr.Array:
        """Create (replacing) an array. ``chunks`` defaults to the whole array, ``compressors`` to
        Zarr's default (zstd level 3); :data:`FAST_COMPRESSORS` for the bulk float arrays."""
        chunks = chunks or tuple(max(s, 1) for s in shape)

        def create() -> zarr.Array:
            if path in self.root:
                del self.root[path]
            return self.root.create_array(path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                          compressors=compressors, config={"write_empty_chunks": True})

        return self._retry(f"creating {path}", create)

    def require(self, path: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
                fill_value: Any = None, compressors: Any = "auto") -> zarr.Array:
        """Open ``path`` if it exists with this shape and dtype, else create it."""
        if path in self.root:
            arr = self.root[path]
            if isinstance(arr, zarr.Array) and arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
        return self.create(path, shape, dtype, chunks, fill_value, compressors)

    def write(self, path: str, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        """Write a whole (small) array."""
        data = np.asarray(data)
        arr = self.create(path, data.shape, data.dtype if data.dtype.kind != "U" else str, chunks)
        self._retry(f"writing {path}", lambda: arr.__setitem__(Ellipsis, data))

    def write_region(self, path: str, selection: Any, data: Any) -> None:
        """Write ``data`` into ``path[selection]`` (one task's chunk(s)), every chunk object written
        even where it holds only fill values, retried on transient errors."""
        def write() -> None:
            self.root[path].with_config({"write_empty_chunks": True})[selection] = data

        self._retry(f"writing {path}[{_show(selection)}]", write)

    # reading arrays -------------------------------------------------------------------------
    def read(self, path: str, selection: Any = slice(None), *, allow_incomplete: bool = False) -> np.ndarray:
        """``path[selection]``. A store opened read-only (``mode="r"``) refuses arrays of a stage that
        was started and is not complete (a run writing it now, or one that died), unless
        ``allow_incomplete``: what a reader sees is the last complete state only."""
        self._check_readable(path, allow_incomplete)
        return self._retry(f"reading {path}[{_show(selection)}]", lambda: np.asarray(self.root[path][selection]))

    def read_rows(self, path: str, rows: np.ndarray, *, allow_incomplete: bool = False) -> np.ndarray:
        """``path[rows]`` along the first axis, in the order of ``rows`` (any order, repeats allowed):
        the distinct rows read in one orthogonal selection, then reordered. Guarded like :meth:`read`."""
        self._check_readable(path, allow_incomplete)
        if np.asarray(rows).dtype == bool:
            raise TypeError(f"read_rows({path!r}): rows are indices, not a mask (np.flatnonzero(mask))")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return self._retry(f"reading {path}[0:0]", lambda: np.asarray(self.root[path][0:0]))
        unique, order = np.unique(rows, return_inverse=True)
        got = self._retry(f"reading {len(unique)} rows of {path}",
                          lambda: np.asarray(self.root[path].get_orthogonal_selection((unique,))))
        return got[order.reshape(-1)]

    def read_group(self, path: str, *, allow_incomplete: bool = False) -> dict[str, np.ndarray]:
        """Every array directly under the group at ``path``, by name. Guarded like :meth:`read`."""
        self._check_readable(path, allow_incomplete)

        def load() -> dict[str, np.ndarray]:
            group = self.root[path]
            if not isinstance(group, zarr.Group):
                raise StoreError(f"Store {self.url}: {path!r} is an array, not a group.")
            return {name: np.asarray(arr[...]) for name, arr in sorted(group.arrays())}

        return self._retry(f"reading the group {path}", load)

    def all_zero(self, path: str, rows_per_read: int, *, allow_incomplete: bool = False) -> bool:
        """Whether every value of the array at ``path`` is zero, read ``rows_per_read`` rows at a time
        (stopping at the first block with a non-zero). Guarded like :meth:`read`."""
        self._check_readable(path, allow_incomplete)
        shape, step = self.shape(path), max(1, int(rows_per_read))
        if not shape:  # a scalar
            return not np.any(self._retry(f"reading {path}", lambda: np.asarray(self.root[path][()])))
        for lo in range(0, shape[0], step):
            block = self._retry(f"reading {path}[{lo}:{lo + step}]",
                                lambda lo=lo: np.asarray(self.root[path][lo:lo + step]))
            if np.any(block):
                return False
        return True

    def _check_readable(self, path: str, allow_incomplete: bool) -> None:
        if path not in self.root:
            raise StoreError(f"Store {self.url} has no array {path!r}.")
        if self.mode == "r" and not allow_incomplete:
            self._require_trusted(path)

    def _require_trusted(self, path: str) -> None:
        stage = stage_of(path)
        info = self.root.attrs.get("stages", {}).get(stage) if stage else None
        if info is None or info.get("complete"):
            return
        progress = self.incomplete_stages().get(stage, "")
        holder = self.lock_holder()
        why = (f"a run is writing it now ({StoreLock.describe(holder)})" if holder else
               "the run that wrote it stopped before finishing it; run it again to resume (`repint run`), and "
               f"`repint verify {self.url}` to check the store")
        raise StoreError(f"Store {self.url}: {path!r} belongs to the stage {stage!r}, which is not complete "
                         f"({progress}): {why}.")

    def __contains__(self, path: str) -> bool:
        return path in self.root

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.root[path].shape)

    def view(self, path: str) -> ArrayView:
        """A read-only view of the array at ``path`` that reads through :meth:`read` (retried, guarded):
        for code that slices an array by itself (``view[lo:hi]``, ``view[x]``, ``view.shape``)."""
        return ArrayView(self, path)


class ArrayView:
    """``store.view(path)``: ``view[selection]`` is ``store.read(path, selection)``."""

    def __init__(self, store: FeatureStore, path: str) -> None:
        self.store, self.path = store, path
        self.shape = store.shape(path)

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self.store.read(self.path, selection)

    def __len__(self) -> int:
        return self.shape[0]
