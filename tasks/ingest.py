"""Ingest: chunks of images -> ψ, logits and predictions in the store.

One task per chunk of ``runtime.chunk_size`` images, and the features array has one Zarr chunk per
such chunk (``storage/layout.py``), so a task writes whole Zarr chunks and two tasks never write into
the same one. Compressing and writing a chunk's ψ (zstd, which releases the GIL) is slower than a
GPU's forward pass of it (docs/scaling.md: 510 images/s per thread against 3,731 on an H200), so the
tasks of a process share the device and the writers (:class:`IngestLanes`): one forward pass at a time
on the device, and at most ``runtime.writers`` chunks being compressed and written beside it, each on
the thread of its own task, which returns (and writes its completion record) only once its chunk is
in the store. The forward pass of the next chunk overlaps the writes of the ones before; ψ waiting
for a writer is at most one chunk. The writes run on the task runner's threads, so a runner needs
``runtime.writers + 1`` of them (:func:`ingest_threads`) for every writer to be used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from prefect import task

import repint
from repint.contents import content_record
from repint.storage import fingerprint_params
from repint.storage.layout import INGEST
from repint.tasks.common import (
    batched_forward,
    bound_chunk_memory,
    chunks,
    device,
    load_split,
    logger,
    open_store,
    release_memory,
    source,
    unit_key,
)
from repint.tasks.runspec import RunSpec

__all__ = ["IngestLanes", "ingest_chunk", "ingest_fingerprint", "ingest_lanes", "ingest_threads", "prepare_ingest"]


class IngestLanes:
    """One device's forward pass and ``writers`` write lanes, shared by the ingest tasks of a process
    that run on that device with that many writers. ``busy``/``peak``: chunks being written now and at
    most at once; ``written``: chunks written (what ``benchmarks/gpu_pipeline.py`` reports)."""

    def __init__(self, writers: int, device_lock: threading.Lock | None = None) -> None:
        self.writers, self.busy, self.peak, self.written = int(writers), 0, 0, 0
        self._device = device_lock or threading.Lock()
        self._slots = threading.BoundedSemaphore(self.writers)
        self._count = threading.Lock()

    @contextmanager
    def forward(self) -> Iterator[None]:
        """The device, to one chunk's forward pass at a time."""
        with self._device:
            yield

    def take_writer(self) -> None:
        """Wait for a free write lane (called holding :meth:`forward`, so that no other chunk's forward
        pass runs ahead of the writers: ψ waiting for one is one chunk); give it back with
        :meth:`release_writer`."""
        self._slots.acquire()
        with self._count:
            self.busy += 1
            self.peak = max(self.peak, self.busy)

    def release_writer(self, written: bool) -> None:
        with self._count:
            self.busy -= 1
            self.written += int(written)
        self._slots.release()


_LANES: dict[tuple[str, int], IngestLanes] = {}
_LANES_GUARD = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.Lock] = {}


def ingest_lanes(spec: RunSpec) -> IngestLanes:
    """This process's lanes for the spec's device and ``runtime.writers`` (one device lock per device,
    whatever the writers)."""
    dev, writers = str(device(spec)), int(spec.runtime.writers)
    with _LANES_GUARD:
        lock = _DEVICE_LOCKS.setdefault(dev, threading.Lock())
        return _LANES.setdefault((dev, writers), IngestLanes(writers, lock))


def ingest_threads(spec: RunSpec) -> int:
    """Task-runner threads an ingest needs for every writer to be busy while the device computes:
    ``runtime.writers + 1``."""
    return int(spec.runtime.writers) + 1


def ingest_fingerprint(spec: RunSpec, split: str, contents: dict[str, Any]) -> str:
    """What ψ of ``split`` is computed from: the model, the source (spec, ids, labels), the chunking and
    the images' contents (``contents``: :func:`repint.contents.content_record`), so that images replaced
    under the same names are ingested again, and every later stage with them."""
    src = source(spec, split)
    return fingerprint_params("ingest", spec.model, src.fingerprint(), spec.chunk_size, contents["fingerprint"])


def data_contents(spec: RunSpec, split: str) -> dict[str, Any]:
    """The content record of ``split``'s images, reusing the store's hashes of unchanged chunks."""
    previous = open_store(spec).attrs.get(f"data_contents_{split}")
    return content_record(source(spec, split), spec.chunk_size, previous)


@task(name="prepare-ingest", task_run_name="prepare-ingest-{split}")
def prepare_ingest(spec: RunSpec, split: str) -> dict:
    """Create the split's arrays (shapes from one forward pass) and start or resume the stage."""
    store, src, sm = open_store(spec), source(spec, split), load_split(spec)
    contents = data_contents(spec, split)
    stage, fp = INGEST.of(split), ingest_fingerprint(spec, split, contents)
    if store.stage_complete(stage.name, fp):
        now = {f"data_contents_{split}": contents, f"skipped_{split}": src.skipped}
        if any(store.attrs.get(k) != v for k, v in now.items()):  # touched files, or skips added: recorded
            store.set_attrs(**now)
        return {"split": split, "n": len(src), "pending": [], "fingerprint": fp}
    probe = batched_forward(sm.psi, src.load(np.arange(1)), 1, device(spec))
    n_classes = batched_forward(sm.head, probe, 1, device(spec)).shape[1]
    K, h, w = probe.shape[1:]
    pending = store.prepare(stage, fp, {"N": len(src), "K": K, "h": h, "w": w, "C": n_classes,
                                        "chunk": spec.chunk_size})
    store.write(stage["ids"], np.asarray(src.ids, dtype=str))
    store.write(stage["labels"], src.labels)
    store.set_attrs(**{f"skipped_{split}": src.skipped, f"data_{split}": src.spec(),
                       f"data_fingerprint_{split}": src.fingerprint(), f"data_contents_{split}": contents},
                    model=spec.model, code_version=repint.__version__)
    if src.skipped:
        logger().warning(f"{len(src.skipped)} {split} images are skipped (listed in the store and summary.json), "
                         f"e.g. {src.skipped[0]['id']}: {src.skipped[0]['reason']}")
    return {"split": split, "n": len(src), "pending": pending, "fingerprint": fp}


@task(name="ingest-chunk", task_run_name="ingest-{split}-{chunk}", retries=2, retry_delay_seconds=2,
      cache_key_fn=unit_key(INGEST, "split"))
def ingest_chunk(spec: RunSpec, split: str, chunk: int) -> dict:
    """ψ, logits and predictions of one chunk of images, written to its own Zarr chunks, then the
    chunk's completion record."""
    bound_chunk_memory()
    store, src, sm = open_store(spec), source(spec, split), load_split(spec)
    lo, hi = chunks(len(src), spec.chunk_size)[chunk]
    images = src.load(np.arange(lo, hi))  # on this task's thread: decoding overlaps the device and the writers
    dev, bs, lanes = device(spec), int(spec.runtime.batch_size), ingest_lanes(spec)
    with lanes.forward():
        feats = batched_forward(sm.psi, images, bs, dev)
        logits = batched_forward(sm.head, feats, bs, dev)
        del images
        _check_finite(spec, split, src.ids, lo, feats, logits)
        lanes.take_writer()
    written = False
    try:
        stage = INGEST.of(split)
        store.write_region(stage["features"], slice(lo, hi), feats)
        store.write_region(stage["logits"], slice(lo, hi), logits)
        store.write_region(stage["predictions"], slice(lo, hi), logits.argmax(1))
        store.mark_unit_done(stage.name, chunk)  # after every write of the chunk, on the same thread
        written = True
    finally:
        lanes.release_writer(written)
    del feats, logits
    release_memory()
    return {"split": split, "chunk": chunk, "n": hi - lo}


def _check_finite(spec: RunSpec, split: str, ids: list[str], lo: int, feats: np.ndarray, logits: np.ndarray) -> None:
    """A clear error for NaN or inf in ψ or the logits of images ``lo..``."""
    bad = ~(np.isfinite(feats.reshape(len(feats), -1)).all(1) & np.isfinite(logits).all(1))
    if bad.any():
        hi = lo + len(feats)
        where = [ids[lo + i] for i in np.flatnonzero(bad)]
        what = "ψ" if not np.isfinite(feats).all() else "the logits (ψ is finite)"
        raise ValueError(
            f"NaN or inf in {what} at layer {spec.model['layer']!r} for {len(where)} of the {hi - lo} {split} images "
            f"{lo}..{hi - 1}: {', '.join(where[:5])}{' ...' if len(where) > 5 else ''}. The model produces non-finite "
            "values: check the images, the checkpoint's weights (`model.checkpoint`) and the input normalisation "
            "(`data.mean`, `data.std`).")
