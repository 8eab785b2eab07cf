"""Interpret: each method's reusable interpretation of each centre (e.g. channel weights)."""

from __future__ import annotations

import numpy as np
from prefect import task

from repint.methods import InterpretationInput
from repint.model import PSI_MODULE
from repint.storage import FeatureStore
from repint.storage.layout import BOUNDARIES, CENTRES, INGEST, INTERPRET, POLYTOPES
from repint.tasks.common import chunks, load_split, open_store, source, unit_key
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import retire_label_stage, stage_fingerprint
from repint.variants import Variant

__all__ = ["cluster_images", "interpret_centre", "interpretation_input", "load_interpretation",
           "prepare_interpretations"]


def interpretation_input(spec: RunSpec, store: FeatureStore, centre: int, method: Variant) -> InterpretationInput:
    """What ``method`` may use to interpret ``centre``: its input image and ψ, the polytope's
    boundaries (methods on RI's polytopes), the cluster's images (ACE)."""
    ref, m = INGEST.of("reference"), method.method()
    x = int(store.read(CENTRES.of()["input_index"])[centre])
    W = b = None
    if m.uses_polytope:
        ids = store.read(POLYTOPES.of()["boundaries"], centre)
        ids = ids[ids >= 0]
        W = store.read_rows(BOUNDARIES.of()["W"], ids) if len(ids) else np.zeros((0, 1))
        b = store.read(BOUNDARIES.of()["b"])[ids]
    cluster = rand = None
    if m.needs_cluster:
        cluster, rand = cluster_images(spec, store, centre)
    return InterpretationInput(
        cluster_images=cluster, random_images=rand,
        model=load_split(spec).composed, layer=PSI_MODULE, image=source(spec, "reference").load(np.array([x]))[0],
        features=store.read(ref["features"], x), predicted_class=int(store.read(ref["predictions"], x)),
        boundaries_W=W, boundaries_b=b, orient=spec.settings(method).orient)


def cluster_images(spec: RunSpec, store: FeatureStore, centre: int) -> tuple[np.ndarray, np.ndarray]:
    """The images of a centre's k-means cluster nearest its centre (ACE's discovery images, at most
    ``evaluation.ace_images``) and as many random reference images: ACE's random concept, one set
    per run (seeded by ``interpretation.seed``) shared by every interpretation, as ACE draws its
    random images from the whole data set."""
    n_max, centres = spec.evaluation.ace_images, CENTRES.of()
    labels = store.read(centres["labels"])
    members = np.flatnonzero(labels == centre)
    feats, vector = INGEST.of("reference")["features"], store.read(centres["vectors"], centre)
    d = np.zeros(len(members))
    for lo, hi in chunks(len(labels), spec.chunk_size):  # the cluster's rows chunk by chunk, each chunk once
        a, z = np.searchsorted(members, [lo, hi])
        if a < z:
            rows = store.read(feats, slice(lo, hi))[members[a:z] - lo]
            d[a:z] = np.linalg.norm(rows.reshape(z - a, -1) - vector, axis=1)
    chosen = np.sort(members[np.argsort(d, kind="stable")[:n_max]])
    rng = np.random.default_rng([spec.interpretation.seed, 0xACE])
    rand = np.sort(rng.choice(len(labels), size=min(n_max, len(labels)), replace=False))
    src = source(spec, "reference")
    return src.load(chosen), src.load(rand)


@task(name="prepare-interpretations", task_run_name="prepare-interpretations-{method}")
def prepare_interpretations(spec: RunSpec, method: Variant) -> list[int]:
    store, stage, m = open_store(spec), INTERPRET.of(method.key), method.method()
    retire_label_stage(store, INTERPRET, method)
    fp = stage_fingerprint(store, stage, spec.settings(method).orient,
                           spec.evaluation.ace_images if m.needs_cluster else None, lead=(method.label, m.version))
    if store.stage_complete(stage.name, fp):
        return []
    return store.prepare(stage, fp, {"V": store.shape(CENTRES.of()["input_index"])[0]})


@task(name="interpret-centre", task_run_name="interpret-{method}-{centre}", retries=1,
      cache_key_fn=unit_key(INTERPRET, "method"))
def interpret_centre(spec: RunSpec, method: Variant, centre: int) -> dict:
    """One method's reusable interpretation of one centre (e.g. channel weights), into the store."""
    store, stage = open_store(spec), INTERPRET.of(method.key)
    out = method.method().interpret(interpretation_input(spec, store, centre, method))
    for key, value in out.items():
        store.write(stage[f"c{centre}/{key}"], value)
    store.mark_unit_done(stage.name, centre)
    return {"method": method.label, "centre": centre}


def load_interpretation(store: FeatureStore, method: Variant | str, centre: int) -> dict[str, np.ndarray]:
    """The stored interpretation of ``centre`` by ``method`` (a variant or a method's label)."""
    return store.read_group(INTERPRET.of(Variant.parse(method).interpreted.key)[f"c{centre}"])
