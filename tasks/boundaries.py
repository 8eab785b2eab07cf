"""Boundaries: sample Q (Eq. 2), then sign bits per chunk (numpy only: cheap to ship to Dask workers)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
from prefect import task

from repint.boundaries import (
    QClampWarning,
    boundary_search,
    linear_boundaries,
    sample_other_class,
    sample_reference_points,
)
from repint.signs import sign_bits
from repint.storage import fingerprint_params
from repint.tasks.common import RunSpec, chunks, device, load_split, logger, open_store, unit_key


def boundaries_fingerprint(spec: RunSpec) -> str:
    attrs = open_store(spec, mode="r").attrs
    i = spec.interpretation
    return fingerprint_params("boundaries", attrs["stages"]["centres"]["fingerprint"], i["q"], i["q_sampling"],
                              i["seed"])


@task(name="sample-boundaries", task_run_name="sample-boundaries-{spec.interpretation[q_sampling]}", retries=1)
def sample_boundaries(spec: RunSpec) -> dict:
    """Sample Q with the configured variant and store ``W``, ``b``, source point, owner, top-2."""
    store, log = open_store(spec), logger()
    store.require_complete("centres")
    fp = boundaries_fingerprint(spec)
    if store.stage_complete("boundaries", fp):
        return {"n_boundaries": store.shape("boundaries/b")[0]}
    i = spec.interpretation
    rng = np.random.default_rng(i["seed"])
    feats = store.root["reference/features"]
    preds = store.read("reference/predictions")
    sm, dev = load_split(spec), device(spec)
    clamped: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QClampWarning)
        if i["q_sampling"] == "reference-points":
            source = sample_reference_points(len(preds), i["q"], rng)
            b = linear_boundaries(sm.head, feats.get_orthogonal_selection((source,)), device=dev)
            owner = np.full(len(source), -1, dtype=np.int64)
        else:
            inputs = store.read("centres/input_index")
            srcs, owners, points = [], [], []
            for v, x in enumerate(inputs):
                others = sample_other_class(preds, int(x), i["q"], rng)
                start = np.repeat(np.asarray(feats[int(x)])[None], len(others), axis=0)
                points.append(boundary_search(sm.head, start, feats.get_orthogonal_selection((others,)), device=dev))
                srcs.append(others)
                owners.append(np.full(len(others), v, dtype=np.int64))
            source, owner = np.concatenate(srcs), np.concatenate(owners)
            b = linear_boundaries(sm.head, np.concatenate(points), device=dev)
        clamped = sorted({str(w.message) for w in caught if issubclass(w.category, QClampWarning)})
    for msg in clamped[:5]:
        log.warning(msg)
    distinct = len(np.unique(np.round(b.W, 6), axis=0))
    if distinct <= max(1, len(np.unique(np.sort(b.top2, axis=1), axis=0))):
        log.warning(f"Only {distinct} distinct boundaries among {len(b)}: G looks affine, RI collapses. "
                    "Cut psi at an earlier layer.")
    store.begin_stage("boundaries", fp, 1)
    store.write("boundaries/W", b.W, chunks=(min(len(b), 256), b.W.shape[1]))
    store.write("boundaries/b", b.b)
    store.write("boundaries/top2", b.top2)
    store.write("boundaries/source", source)
    store.write("boundaries/owner", owner)
    store.set_attrs(q_clamped=clamped, n_distinct_boundaries=int(distinct), interpretation=spec.interpretation)
    store.mark_unit_done("boundaries", 0)
    store.finish_stage("boundaries")
    return {"n_boundaries": len(b), "distinct": int(distinct), "clamped": len(clamped)}


@task(name="prepare-signs", task_run_name="prepare-signs-{split}")
def prepare_signs(spec: RunSpec, split: str) -> list[int]:
    store = open_store(spec)
    store.require_complete("boundaries")
    store.require_complete(f"ingest-{split}")
    st = store.attrs["stages"]
    fp = fingerprint_params("signs", st["boundaries"]["fingerprint"], st[f"ingest-{split}"]["fingerprint"])
    stage = f"signs-{split}"
    if store.stage_complete(stage, fp):
        return []
    n, m = store.shape(f"{split}/predictions")[0], store.shape("boundaries/b")[0]
    store.begin_stage(stage, fp, len(chunks(n, spec.chunk_size)), arrays=[f"signs/{split}"])
    store.require(f"signs/{split}", (n, -(-m // 8)), "u1", (spec.chunk_size, -(-m // 8)), fill_value=0)
    return store.pending_units(stage)


_BOUNDARIES: dict[tuple[str, str, str | None], tuple[np.ndarray, np.ndarray]] = {}
_BOUNDARIES_LOCK = threading.Lock()


def stored_boundaries(store) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """``W`` and ``b`` of the store's boundaries, read once per process (worker) and kept (read-only)
    for its later chunks, keyed by the store's id and the boundaries stage's fingerprint and epoch:
    a recreated store or resampled boundaries are read afresh. Reading ``W`` ([|Q|, D]) cost about as
    much as the chunk's product itself (``repint bench``, docs/scaling.md)."""
    info = store.attrs.get("stages", {}).get("boundaries", {})
    key = (store.store_id, str(info.get("fingerprint")), info.get("epoch"))
    with _BOUNDARIES_LOCK:
        hit = _BOUNDARIES.get(key)
    if hit is None or not info.get("complete"):
        W, b = store.read("boundaries/W"), store.read("boundaries/b")
        W.flags.writeable = b.flags.writeable = False
        hit = (W, b)
        if info.get("complete"):
            with _BOUNDARIES_LOCK:
                while len(_BOUNDARIES) >= 4:
                    _BOUNDARIES.pop(next(iter(_BOUNDARIES)))
                _BOUNDARIES[key] = hit
    return hit


@task(name="sign-chunk", task_run_name="signs-{split}-{chunk}", retries=2, retry_delay_seconds=1,
      cache_key_fn=unit_key("signs-{split}"))
def sign_chunk(spec: RunSpec, split: str, chunk: int) -> dict:
    """Packed sign bits of one chunk of images against every boundary, read from and written to
    the store."""
    store = open_store(spec)
    n = store.shape(f"{split}/predictions")[0]
    lo, hi = chunks(n, spec.chunk_size)[chunk]
    W, b = stored_boundaries(store)
    bits = sign_bits(store.read(f"{split}/features", slice(lo, hi)), W, b)
    store.write_region(f"signs/{split}", slice(lo, hi), bits)
    store.mark_unit_done(f"signs-{split}", chunk)
    return {"split": split, "chunk": chunk, "n": hi - lo}
