"""Boundaries: sample Q (Eq. 2), then sign bits per chunk (numpy only: cheap to ship to Dask workers)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
from prefect import task

from repint.boundaries import QClampWarning
from repint.qsampling import get_q_sampler
from repint.signs import sign_bits
from repint.storage.layout import BOUNDARIES, CENTRES, INGEST, SIGNS
from repint.tasks.common import chunks, device, load_split, logger, open_store, unit_key
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import stage_fingerprint


@task(name="sample-boundaries", task_run_name="sample-boundaries-{spec.interpretation.q_sampling}", retries=1)
def sample_boundaries(spec: RunSpec) -> dict:
    """Sample Q with the configured way (:mod:`repint.qsampling`) and store ``W``, ``b``, source point,
    owner, top-2."""
    store, log, stage, ref = open_store(spec), logger(), BOUNDARIES.of(), INGEST.of("reference")
    i = spec.interpretation
    fp = stage_fingerprint(store, stage, i.q, i.q_sampling, i.seed)
    if store.stage_complete(stage.name, fp):
        return {"n_boundaries": store.shape(stage["b"])[0]}
    sm = load_split(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QClampWarning)
        q = get_q_sampler(i.q_sampling)(sm.head, lambda rows: store.read_rows(ref["features"], rows),
                                        store.read(ref["predictions"]), store.read(CENTRES.of()["input_index"]),
                                        i.q, np.random.default_rng(i.seed), device(spec))
        clamped = sorted({str(w.message) for w in caught if issubclass(w.category, QClampWarning)})
    for msg in clamped[:5]:
        log.warning(msg)
    b = q.boundaries
    distinct = len(np.unique(np.round(b.W, 6), axis=0))
    if distinct <= max(1, len(np.unique(np.sort(b.top2, axis=1), axis=0))):
        log.warning(f"Only {distinct} distinct boundaries among {len(b)}: G looks affine, RI collapses. "
                    "Cut psi at an earlier layer.")
    store.prepare(stage, fp, {})
    store.write(stage["W"], b.W, chunks=stage.resolve(stage.spec("W").chunks, {"M": len(b), "D": b.W.shape[1]}))
    for name, value in (("b", b.b), ("top2", b.top2), ("source", q.source), ("owner", q.owner)):
        store.write(stage[name], value)
    store.set_attrs(q_clamped=clamped, n_distinct_boundaries=int(distinct),
                    interpretation=spec.interpretation.model_dump())
    store.mark_unit_done(stage.name, 0)
    store.finish_stage(stage.name)
    return {"n_boundaries": len(b), "distinct": int(distinct), "clamped": len(clamped)}


@task(name="prepare-signs", task_run_name="prepare-signs-{split}")
def prepare_signs(spec: RunSpec, split: str) -> list[int]:
    store, stage = open_store(spec), SIGNS.of(split)
    fp = stage_fingerprint(store, stage)
    if store.stage_complete(stage.name, fp):
        return []
    return store.prepare(stage, fp, {"N": store.shape(INGEST.of(split)["predictions"])[0],
                                     "M": store.shape(BOUNDARIES.of()["b"])[0], "chunk": spec.chunk_size})


_BOUNDARIES: dict[tuple[str, str, str | None], tuple[np.ndarray, np.ndarray]] = {}
_BOUNDARIES_LOCK = threading.Lock()


def stored_boundaries(store) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """``W`` and ``b`` of the store's boundaries, read once per process (worker) and kept (read-only)
    for its later chunks, keyed by the store's id and the boundaries stage's fingerprint and epoch:
    a recreated store or resampled boundaries are read afresh. Reading ``W`` ([|Q|, D]) cost about as
    much as the chunk's product itself (``repint bench``, docs/scaling.md)."""
    info = store.attrs.get("stages", {}).get(BOUNDARIES.of().name, {})
    key = (store.store_id, str(info.get("fingerprint")), info.get("epoch"))
    with _BOUNDARIES_LOCK:
        hit = _BOUNDARIES.get(key)
    if hit is None or not info.get("complete"):
        W, b = store.read(BOUNDARIES.of()["W"]), store.read(BOUNDARIES.of()["b"])
        W.flags.writeable = b.flags.writeable = False
        hit = (W, b)
        if info.get("complete"):
            with _BOUNDARIES_LOCK:
                while len(_BOUNDARIES) >= 4:
                    _BOUNDARIES.pop(next(iter(_BOUNDARIES)))
                _BOUNDARIES[key] = hit
    return hit


@task(name="sign-chunk", task_run_name="signs-{split}-{chunk}", retries=2, retry_delay_seconds=1,
      cache_key_fn=unit_key(SIGNS, "split"))
def sign_chunk(spec: RunSpec, split: str, chunk: int) -> dict:
    """Packed sign bits of one chunk of images against every boundary, read from and written to
    the store."""
    store, stage, images = open_store(spec), SIGNS.of(split), INGEST.of(split)
    lo, hi = chunks(store.shape(images["predictions"])[0], spec.chunk_size)[chunk]
    W, b = stored_boundaries(store)
    store.write_region(stage[""], slice(lo, hi), sign_bits(store.read(images["features"], slice(lo, hi)), W, b))
    store.mark_unit_done(stage.name, chunk)
    return {"split": split, "chunk": chunk, "n": hi - lo}
