"""Ingest: chunks of images -> ψ, logits and predictions in the store."""

from __future__ import annotations

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
    images = src.load(np.arange(lo, hi))
    dev, bs = device(spec), int(spec.runtime.batch_size)
    feats = batched_forward(sm.psi, images, bs, dev)
    logits = batched_forward(sm.head, feats, bs, dev)
    bad = ~(np.isfinite(feats.reshape(len(feats), -1)).all(1) & np.isfinite(logits).all(1))
    if bad.any():
        ids = [src.ids[lo + i] for i in np.flatnonzero(bad)]
        where = "ψ" if not np.isfinite(feats).all() else "the logits (ψ is finite)"
        raise ValueError(
            f"NaN or inf in {where} at layer {spec.model['layer']!r} for {len(ids)} of the {hi - lo} {split} images "
            f"{lo}..{hi - 1}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}. The model produces non-finite "
            "values: check the images, the checkpoint's weights (`model.checkpoint`) and the input normalisation "
            "(`data.mean`, `data.std`).")
    stage = INGEST.of(split)
    store.write_region(stage["features"], slice(lo, hi), feats)
    store.write_region(stage["logits"], slice(lo, hi), logits)
    store.write_region(stage["predictions"], slice(lo, hi), logits.argmax(1))
    store.mark_unit_done(stage.name, chunk)
    del images, feats, logits
    release_memory()
    return {"split": split, "chunk": chunk, "n": hi - lo}
