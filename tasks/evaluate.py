"""Evaluate: assign unseen images to interpretations, mask them by the reused interpretations, run
the model on the masked images, and score them: AD/AI and the metrics of ``evaluation.metrics``
(:mod:`repint.scoring`), every per-image column in the store, summaries split by RI's coverage."""

from __future__ import annotations

import numpy as np
import torch
from prefect import task

from repint.assignment import assign, fallbacks
from repint.metrics import AverageDropIncrease, mask_images, softmax
from repint.model import PSI_MODULE
from repint.scoring import ScoreSettings, mean_curves, score_images, summarise_scores
from repint.signs import unpack_signs
from repint.storage.layout import ASSIGNMENT, BOUNDARIES, CENTRES, EVALUATE, INGEST, POLYTOPES, SIGNS
from repint.tasks.common import (
    batched_forward,
    chunks,
    device,
    load_split,
    n_distinct_polytopes,
    open_store,
    source,
    unit_key,
)
from repint.tasks.interpret import load_interpretation
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import retire_label_stage, stage_fingerprint
from repint.variants import Variant

__all__ = ["assign_unseen", "evaluate_chunk", "prepare_evaluation", "summarise_evaluation"]


@task(name="assign-unseen", task_run_name="assign-unseen")
def assign_unseen(spec: RunSpec) -> dict:
    """Assign the unseen images (:func:`repint.assignment.assign`): RI the polytope of V that covers
    ``e`` and has ``e``'s predicted class (nearest centre among several), else the nearest centre's.
    Baselines: the nearest centre.

    One chunk of ``runtime.chunk_size`` images at a time (its features, sign bits and predictions; the
    centres and polytopes whole): each image's assignment is its row's alone, so the arrays equal
    :func:`assign` on the whole set. The per-image results (``(3 + R) x 8 + 1`` bytes an image) are
    gathered and each array is written whole once every chunk is done, as before: the layout declares
    them one chunk each, and no reader ever sees an array half of this run's."""
    store, polytopes, centres, unseen = open_store(spec), POLYTOPES.of(), CENTRES.of(), INGEST.of("unseen")
    for stage in (POLYTOPES.of().name, SIGNS.of("unseen").name):
        store.require_complete(stage)
    n, m = store.shape(unseen["predictions"])[0], store.shape(BOUNDARIES.of()["b"])[0]
    vectors, centre_class = store.read(centres["vectors"]), store.read(centres["predicted_class"])
    ids, orient = store.read(polytopes["boundaries"]), store.read(polytopes["orientation"])
    out = {"nearest": np.zeros(n, np.int64), "ri_centre": np.zeros(n, np.int64), "ri_covered": np.zeros(n, bool),
           "fallback_centre": np.zeros((n, len(fallbacks())), np.int64)}
    for lo, hi in chunks(n, spec.chunk_size):
        rows = slice(lo, hi)
        signs = unpack_signs(store.read(SIGNS.of("unseen")[""], rows), m)
        a = assign(store.read(unseen["features"], rows), vectors, signs, ids, orient,
                   store.read(unseen["predictions"], rows), centre_class, fallback=spec.evaluation.fallback)
        for name, value in out.items():
            value[lo:hi] = getattr(a, name)
    path = ASSIGNMENT.of()
    for name, value in out.items():
        store.write(path[name], value)
    return {"covered_unseen": int(out["ri_covered"].sum()), "n_unseen": n}


def _fallback(spec: RunSpec, method: Variant) -> str:
    return method.evaluation(spec.evaluation).fallback


def _settings(spec: RunSpec) -> ScoreSettings:
    return ScoreSettings.of(spec.evaluation, spec.runtime.batch_size, spec.interpretation.seed)


@task(name="prepare-evaluation", task_run_name="prepare-evaluation-{method}")
def prepare_evaluation(spec: RunSpec, method: Variant) -> list[int]:
    store, stage = open_store(spec), EVALUATE.of(method.key)
    retire_label_stage(store, EVALUATE, method)
    fallback = _fallback(spec, method)  # hashed where it matters and differs from the rule stores had before it
    settings = _settings(spec)
    # read: the interpretations the method reuses (a fallback variant's are its base's)
    fp = stage_fingerprint(store, EVALUATE.of(method.interpreted.key), spec.evaluation.keep_fraction,
                           *((fallback,) if method.method().uses_polytope and fallback != fallbacks()[0] else ()),
                           settings.fingerprint())  # a stage of before the metrics is evaluated again
    if store.stage_complete(stage.name, fp):
        _record_reuse(store, spec, method, fallback)
        return []
    side = int(spec.model["image_size"])
    pending = store.prepare(stage, fp, {"N": store.shape(INGEST.of("unseen")["predictions"])[0],
                                        "chunk": spec.chunk_size, **settings.sizes(side, side)})
    store.update_attrs(stage.group, fractions=list(settings.fractions),
                       curves=[f"{m}-{b}" for m, b in settings.curves], curve_steps=settings.steps)
    _record_reuse(store, spec, method, fallback)
    return pending


def _record_reuse(store, spec: RunSpec, method: Variant, fallback: str) -> None:  # noqa: ANN001
    """How the evaluation reuses the method's interpretations, for those who apply them to new images
    (:class:`repint.storage.interpretations.Interpretations`): the fallback rule, the kept share and
    Eq. 6's normals (settings only: no fingerprint changes)."""
    store.update_attrs(EVALUATE.of(method.key).group, fallback=fallback, keep_fraction=spec.evaluation.keep_fraction,
                       unit_normals=spec.settings(method).unit_normals, method=method.label)


def _centres(store, method: Variant, spec: RunSpec, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The interpretation each image of ``[lo, hi)`` reuses (RI's methods: the covering polytope's, else
    their fallback's; baselines: the nearest centre) and whether RI's polytopes cover it."""
    assignment = ASSIGNMENT.of()
    if not method.method().uses_polytope:
        return store.read(assignment["nearest"], slice(lo, hi)), np.zeros(hi - lo, bool)
    covered = store.read(assignment["ri_covered"], slice(lo, hi))
    fallback = store.read(assignment["fallback_centre"], slice(lo, hi))[:, fallbacks().index(_fallback(spec, method))]
    return np.where(covered, store.read(assignment["ri_centre"], slice(lo, hi)), fallback), covered


@task(name="evaluate-chunk", task_run_name="evaluate-{method}-{chunk}", retries=1,
      cache_key_fn=unit_key(EVALUATE, "method"))
def evaluate_chunk(spec: RunSpec, method: Variant, chunk: int) -> dict:
    """Mask one chunk of unseen images by the method's reused interpretation, run the model on the
    masked images in batches, and store ``Y_c(e)``, ``Y_c(e')`` and the per-image columns of
    :func:`repint.scoring.score_images`."""
    store, stage, unseen, m = open_store(spec), EVALUATE.of(method.key), INGEST.of("unseen"), method.method()
    sm = load_split(spec)
    m.bind(sm.composed, PSI_MODULE)
    lo, hi = chunks(store.shape(unseen["predictions"])[0], spec.chunk_size)[chunk]
    images = source(spec, "unseen").load(np.arange(lo, hi))
    feats = store.read(unseen["features"], slice(lo, hi))
    logits = store.read(unseen["logits"], slice(lo, hi))
    cls = logits.argmax(1)
    centre, covered = _centres(store, method, spec, lo, hi)
    settings = _settings(spec)
    fractions = (spec.evaluation.keep_fraction, *settings.fractions)
    maps = np.zeros((hi - lo, *images.shape[-2:]), dtype=np.float32)
    masks = np.zeros((len(fractions), hi - lo, *images.shape[-2:]), dtype=bool)
    for v in np.unique(centre):
        sel = centre == v
        maps[sel], masks[:, sel] = m.reused_maps(load_interpretation(store, method, int(v)), images[sel],
                                                 feats[sel], fractions)
    dev = device(spec)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return batched_forward(sm.model, x, spec.runtime.batch_size, dev)

    rows = np.arange(hi - lo)
    y = softmax(logits)[rows, cls]
    keep = masks[0]
    scores = score_images(forward, images, cls, y, maps, masks[1:], settings, first=lo)
    for name, value in (("centre", centre), ("covered", covered), ("y", y),
                        ("y_masked", softmax(forward(mask_images(images, keep)))[rows, cls]),
                        ("kept_fraction", keep.reshape(hi - lo, -1).mean(1)), *scores.items()):
        store.write_region(stage[name], slice(lo, hi), value)
    store.mark_unit_done(stage.name, chunk)
    return {"method": method.label, "chunk": chunk, "n": hi - lo}


def evaluation_records(store, method: Variant) -> dict[str, np.ndarray]:  # noqa: ANN001
    """One method's per-image columns, as stored."""
    stage = EVALUATE.of(method.key)
    return {name: store.read(stage[name]) for name, _ in ((a.name, a) for a in stage.kind.arrays)}


@task(name="summarise-evaluation", task_run_name="summarise-{method}")
def summarise_evaluation(spec: RunSpec, method: Variant) -> dict:
    """mAD / mAI (percent) of one method over the unseen set, and every selected metric split by RI's
    coverage and per predicted class, from the stored records."""
    store, stage = open_store(spec), EVALUATE.of(method.key)
    store.require_complete(stage.name)
    rec = evaluation_records(store, method)
    metric = AverageDropIncrease()
    metric.update(rec["y"], rec["y_masked"])
    s = metric.summary()
    out = {"mAD": round(s["AD"], 4), "mAI": round(s["AI"], 4), "n": int(s["n"])}
    if method.method().uses_polytope:
        out["covered_unseen"] = int(rec["covered"].sum())
        out["distinct_polytopes"] = n_distinct_polytopes(store)
    store.update_attrs(stage.group, **out)
    ri_covered = store.read(ASSIGNMENT.of()["ri_covered"])
    classes = store.read(INGEST.of("unseen")["predictions"])
    settings = _settings(spec)
    return {**out, **summarise_scores(rec, ri_covered, classes, settings),
            "curves": mean_curves(rec["curves"], settings.curves)}
