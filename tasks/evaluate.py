"""Evaluate: assign unseen images to interpretations, mask them by the reused interpretations, run
the model on the masked images, and compute AD/AI."""

from __future__ import annotations

import numpy as np
import torch
from prefect import task

from repint.assignment import assign, fallbacks
from repint.metrics import AverageDropIncrease, mask_images, softmax
from repint.model import PSI_MODULE
from repint.signs import unpack_signs
from repint.storage.layout import ASSIGNMENT, BOUNDARIES, CENTRES, EVALUATE, INGEST, POLYTOPES, SIGNS
from repint.tasks.common import batched_forward, chunks, device, load_split, open_store, source, unit_key
from repint.tasks.interpret import load_interpretation
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import retire_label_stage, stage_fingerprint
from repint.variants import Variant

__all__ = ["assign_unseen", "evaluate_chunk", "prepare_evaluation", "summarise_evaluation"]


@task(name="assign-unseen", task_run_name="assign-unseen")
def assign_unseen(spec: RunSpec) -> dict:
    """Assign the unseen images (:func:`repint.assignment.assign`): RI the polytope of V that covers
    ``e`` and has ``e``'s predicted class (nearest centre among several), else the nearest centre's.
    Baselines: the nearest centre."""
    store, polytopes, centres, unseen = open_store(spec), POLYTOPES.of(), CENTRES.of(), INGEST.of("unseen")
    for stage in (POLYTOPES.of().name, SIGNS.of("unseen").name):
        store.require_complete(stage)
    feats = store.read(unseen["features"])
    signs = unpack_signs(store.read(SIGNS.of("unseen")[""]), store.shape(BOUNDARIES.of()["b"])[0])
    a = assign(feats, store.read(centres["vectors"]), signs, store.read(polytopes["boundaries"]),
               store.read(polytopes["orientation"]), store.read(unseen["predictions"]),
               store.read(centres["predicted_class"]), fallback=spec.evaluation.fallback)
    out = ASSIGNMENT.of()
    for name in ("nearest", "ri_centre", "ri_covered"):
        store.write(out[name], getattr(a, name))
    return {"covered_unseen": int(a.ri_covered.sum()), "n_unseen": len(feats)}


@task(name="prepare-evaluation", task_run_name="prepare-evaluation-{method}")
def prepare_evaluation(spec: RunSpec, method: Variant) -> list[int]:
    store, stage = open_store(spec), EVALUATE.of(method.key)
    retire_label_stage(store, EVALUATE, method)
    fallback = spec.evaluation.fallback  # hashed where it matters and differs from the rule stores had before it
    fp = stage_fingerprint(store, stage, spec.evaluation.keep_fraction,
                           *((fallback,) if method.method().uses_polytope and fallback != fallbacks()[0] else ()))
    if store.stage_complete(stage.name, fp):
        return []
    return store.prepare(stage, fp, {"N": store.shape(INGEST.of("unseen")["predictions"])[0],
                                     "chunk": spec.chunk_size})


@task(name="evaluate-chunk", task_run_name="evaluate-{method}-{chunk}", retries=1,
      cache_key_fn=unit_key(EVALUATE, "method"))
def evaluate_chunk(spec: RunSpec, method: Variant, chunk: int) -> dict:
    """Mask one chunk of unseen images by the method's reused interpretation, run the model on the
    masked images in batches, and store ``Y_c(e)`` and ``Y_c(e')``."""
    store, stage, unseen, m = open_store(spec), EVALUATE.of(method.key), INGEST.of("unseen"), method.method()
    sm = load_split(spec)
    m.bind(sm.composed, PSI_MODULE)
    lo, hi = chunks(store.shape(unseen["predictions"])[0], spec.chunk_size)[chunk]
    images = source(spec, "unseen").load(np.arange(lo, hi))
    feats = store.read(unseen["features"], slice(lo, hi))
    logits = store.read(unseen["logits"], slice(lo, hi))
    cls = logits.argmax(1)
    assignment = ASSIGNMENT.of()
    centre = store.read(assignment["ri_centre" if m.uses_polytope else "nearest"], slice(lo, hi))
    keep = np.zeros((hi - lo, *images.shape[-2:]), dtype=bool)
    for v in np.unique(centre):
        sel = centre == v
        keep[sel] = m.keep_masks(load_interpretation(store, method, int(v)), images[sel], feats[sel],
                                 spec.evaluation.keep_fraction)
    with torch.no_grad():
        out = batched_forward(sm.model, mask_images(images, keep), spec.runtime.batch_size, device(spec))
    rows = np.arange(hi - lo)
    covered = store.read(assignment["ri_covered"], slice(lo, hi)) if m.uses_polytope else np.zeros(hi - lo, bool)
    for name, value in (("centre", centre), ("covered", covered), ("y", softmax(logits)[rows, cls]),
                        ("y_masked", softmax(out)[rows, cls]), ("kept_fraction", keep.reshape(hi - lo, -1).mean(1))):
        store.write_region(stage[name], slice(lo, hi), value)
    store.mark_unit_done(stage.name, chunk)
    return {"method": method.label, "chunk": chunk, "n": hi - lo}


@task(name="summarise-evaluation", task_run_name="summarise-{method}")
def summarise_evaluation(spec: RunSpec, method: Variant) -> dict:
    """mAD / mAI (percent) of one method over the unseen set, from the stored records."""
    store, stage = open_store(spec), EVALUATE.of(method.key)
    store.require_complete(stage.name)
    metric = AverageDropIncrease()
    metric.update(store.read(stage["y"]), store.read(stage["y_masked"]))
    s = metric.summary()
    out = {"mAD": round(s["AD"], 4), "mAI": round(s["AI"], 4), "n": int(s["n"])}
    if method.method().uses_polytope:
        out["covered_unseen"] = int(store.read(stage["covered"]).sum())
    store.update_attrs(stage.group, **out)
    return out
