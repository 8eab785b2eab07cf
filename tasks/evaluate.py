"""Evaluate: assign unseen images to interpretations, build each method's interpretation per centre,
mask the unseen images by the reused maps, and compute AD/AI."""

from __future__ import annotations

import numpy as np
import torch
from prefect import task

from repint.centres import squared_distances
from repint.methods import InterpretationInput, get_method, parse_variant
from repint.metrics import AverageDropIncrease, mask_images
from repint.model import PSI_MODULE
from repint.signs import unpack_signs
from repint.storage import fingerprint_params
from repint.tasks.common import (
    RunSpec,
    batched_forward,
    chunks,
    device,
    load_split,
    open_store,
    source,
    unit_key,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


@task(name="assign-unseen", task_run_name="assign-unseen")
def assign_unseen(spec: RunSpec) -> dict:
    """RI: the polytope of V that covers ``e`` and has ``e``'s predicted class (nearest centre among
    several), else the nearest centre's. Baselines: the nearest centre."""
    store = open_store(spec)
    for stage in ("polytopes", "signs-unseen"):
        store.require_complete(stage)
    feats = store.read("unseen/features")
    centres = store.read("centres/vectors")
    dist = squared_distances(feats, centres)
    nearest = np.argmin(dist, axis=1)
    preds = store.read("unseen/predictions")
    centre_class = store.read("centres/predicted_class")
    m = store.shape("boundaries/b")[0]
    signs = unpack_signs(store.read("signs/unseen"), m)
    ids, orient = store.read("polytopes/boundaries"), store.read("polytopes/orientation")
    cov = np.zeros((len(feats), len(centres)), dtype=bool)
    for v in range(len(centres)):
        k = ids[v] >= 0
        cov[:, v] = (signs[:, ids[v][k]] == orient[v][k]).all(axis=1) & (preds == centre_class[v])
    ri = np.where(cov.any(1), np.argmin(np.where(cov, dist, np.inf), axis=1), nearest)
    store.write("evaluation/assignment/nearest", nearest)
    store.write("evaluation/assignment/ri_centre", ri)
    store.write("evaluation/assignment/ri_covered", cov.any(1))
    return {"covered_unseen": int(cov.any(1).sum()), "n_unseen": len(feats)}


def is_ri(method: str) -> bool:
    """A method built on RI's polytopes (RI, RI-exact, their variants such as ``RI[orient=false]``):
    it gets the polytope's boundaries and is reused on the unseen images the polytope covers."""
    return get_method(method).uses_polytope


def method_settings(spec: RunSpec, method: str) -> dict:
    """The ``interpretation`` settings a method (variant) runs with."""
    return {**spec.interpretation, **parse_variant(method)[1]}


def interpretation_input(spec: RunSpec, store, centre: int, method: str) -> InterpretationInput:  # noqa: ANN001
    x = int(store.read("centres/input_index")[centre])
    sm = load_split(spec)
    W = b = None
    if is_ri(method):
        ids = store.read("polytopes/boundaries", centre)
        ids = ids[ids >= 0]
        W = store.root["boundaries/W"].get_orthogonal_selection((ids, slice(None))) if len(ids) else np.zeros((0, 1))
        b = store.read("boundaries/b")[ids]
    cluster = rand = None
    if get_method(method).needs_cluster:
        cluster, rand = cluster_images(spec, store, centre)
    return InterpretationInput(
        cluster_images=cluster, random_images=rand,
        model=sm.composed, layer=PSI_MODULE, image=source(spec, "reference").load(np.array([x]))[0],
        features=store.read("reference/features", x), predicted_class=int(store.read("reference/predictions", x)),
        boundaries_W=W, boundaries_b=b, orient=bool(method_settings(spec, method).get("orient", True)))


def cluster_images(spec: RunSpec, store, centre: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The images of a centre's k-means cluster nearest its centre (ACE's discovery images, at most
    ``evaluation.ace_images``) and as many random reference images: ACE's random concept, one set
    per run (seeded by ``interpretation.seed``) shared by every interpretation, as ACE draws its
    random images from the whole data set."""
    n_max = int(spec.evaluation.get("ace_images", 20))
    labels = store.read("centres/labels")
    members = np.flatnonzero(labels == centre)
    feats = store.root["reference/features"]
    c = store.read("centres/vectors", centre)
    d = np.linalg.norm(feats.get_orthogonal_selection((members,)).reshape(len(members), -1) - c, axis=1)
    chosen = np.sort(members[np.argsort(d, kind="stable")[:n_max]])
    rng = np.random.default_rng([int(spec.interpretation.get("seed", 0)), 0xACE])
    rand = np.sort(rng.choice(len(labels), size=min(n_max, len(labels)), replace=False))
    src = source(spec, "reference")
    return src.load(chosen), src.load(rand)


@task(name="prepare-interpretations", task_run_name="prepare-interpretations-{method}")
def prepare_interpretations(spec: RunSpec, method: str) -> list[int]:
    store = open_store(spec)
    store.require_complete("polytopes")
    m = get_method(method)
    fp = fingerprint_params("interpret", method, m.version, store.attrs["stages"]["polytopes"]["fingerprint"],
                            method_settings(spec, method).get("orient", True),
                            spec.evaluation.get("ace_images") if m.needs_cluster else None)
    stage = f"interpret-{method}"
    if store.stage_complete(stage, fp):
        return []
    store.begin_stage(stage, fp, store.shape("centres/input_index")[0], arrays=[f"interpretations/{method}"])
    return store.pending_units(stage)


@task(name="interpret-centre", task_run_name="interpret-{method}-{centre}", retries=1,
      cache_key_fn=unit_key("interpret-{method}"))
def interpret_centre(spec: RunSpec, method: str, centre: int) -> dict:
    """One method's reusable interpretation of one centre (e.g. channel weights), into the store."""
    store = open_store(spec)
    out = get_method(method).interpret(interpretation_input(spec, store, centre, method))
    for key, value in out.items():
        store.write(f"interpretations/{method}/c{centre}/{key}", value)
    store.mark_unit_done(f"interpret-{method}", centre)
    return {"method": method, "centre": centre}


def load_interpretation(store, method: str, centre: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    grp = store.root[f"interpretations/{method}/c{centre}"]
    return {k: np.asarray(a[...]) for k, a in grp.arrays()}


@task(name="prepare-evaluation", task_run_name="prepare-evaluation-{method}")
def prepare_evaluation(spec: RunSpec, method: str) -> list[int]:
    store = open_store(spec)
    st = store.attrs["stages"]
    fp = fingerprint_params("evaluate", st[f"interpret-{method}"]["fingerprint"], st["signs-unseen"]["fingerprint"],
                            spec.evaluation.get("keep_fraction", 0.2))
    stage = f"evaluate-{method}"
    if store.stage_complete(stage, fp):
        return []
    n, cs = store.shape("unseen/predictions")[0], spec.chunk_size
    store.begin_stage(stage, fp, len(chunks(n, cs)), arrays=[f"evaluation/{method}"])
    for name, dtype, fill in (("centre", "i8", -1), ("covered", bool, False), ("y", "f8", np.nan),
                              ("y_masked", "f8", np.nan), ("kept_fraction", "f8", np.nan)):
        store.require(f"evaluation/{method}/{name}", (n,), dtype, (cs,), fill_value=fill)
    return store.pending_units(stage)


@task(name="evaluate-chunk", task_run_name="evaluate-{method}-{chunk}", retries=1,
      cache_key_fn=unit_key("evaluate-{method}"))
def evaluate_chunk(spec: RunSpec, method: str, chunk: int) -> dict:
    """Mask one chunk of unseen images by the method's reused interpretation, run the model on the
    masked images in batches, and store ``Y_c(e)`` and ``Y_c(e')``."""
    store, m = open_store(spec), get_method(method)
    sm = load_split(spec)
    m.bind(sm.composed, PSI_MODULE)
    n = store.shape("unseen/predictions")[0]
    lo, hi = chunks(n, spec.chunk_size)[chunk]
    idx = np.arange(lo, hi)
    images = source(spec, "unseen").load(idx)
    feats = store.read("unseen/features", slice(lo, hi))
    logits = store.read("unseen/logits", slice(lo, hi))
    cls = logits.argmax(1)
    key = "ri_centre" if is_ri(method) else "nearest"
    centre = store.read(f"evaluation/assignment/{key}")[lo:hi]
    keep = np.zeros((len(idx), *images.shape[-2:]), dtype=bool)
    fraction = float(spec.evaluation.get("keep_fraction", 0.2))
    for v in np.unique(centre):
        sel = centre == v
        keep[sel] = m.keep_masks(load_interpretation(store, method, int(v)), images[sel], feats[sel], fraction)
    masked = mask_images(images, keep)
    with torch.no_grad():
        out = batched_forward(sm.model, masked, int(spec.runtime["batch_size"]), device(spec))
    y = softmax(logits)[np.arange(len(idx)), cls]
    y_masked = softmax(out)[np.arange(len(idx)), cls]
    covered = store.read("evaluation/assignment/ri_covered")[lo:hi] if is_ri(method) else np.zeros(len(idx), bool)
    for name, value in (("centre", centre), ("covered", covered), ("y", y), ("y_masked", y_masked),
                        ("kept_fraction", keep.reshape(len(idx), -1).mean(1))):
        store.write_region(f"evaluation/{method}/{name}", slice(lo, hi), value)
    store.mark_unit_done(f"evaluate-{method}", chunk)
    return {"method": method, "chunk": chunk, "n": len(idx)}


@task(name="summarise-evaluation", task_run_name="summarise-{method}")
def summarise_evaluation(spec: RunSpec, method: str) -> dict:
    """mAD / mAI (percent) of one method over the unseen set, from the stored records."""
    store = open_store(spec)
    store.require_complete(f"evaluate-{method}")
    metric = AverageDropIncrease()
    metric.update(store.read(f"evaluation/{method}/y"), store.read(f"evaluation/{method}/y_masked"))
    s = metric.summary()
    out = {"mAD": round(s["AD"], 4), "mAI": round(s["AI"], 4), "n": int(s["n"])}
    if is_ri(method):
        out["covered_unseen"] = int(store.read(f"evaluation/{method}/covered").sum())
    store.root[f"evaluation/{method}"].attrs.update(out)
    return out
