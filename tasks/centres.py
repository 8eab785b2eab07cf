"""Interpretations V: k-means centres of the reference features (|V| = per class x C)."""

from __future__ import annotations

import numpy as np
from prefect import task

from repint.centres import kmeans_centres
from repint.storage.layout import CENTRES, INGEST
from repint.tasks.common import logger, open_store
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import stage_fingerprint


@task(name="centres", task_run_name="centres", retries=1)
def compute_centres(spec: RunSpec) -> dict:
    """k-means on flattened ψ(R); the input of each interpretation is the reference image nearest
    its centre. Refuses a reference set predicted as a single class."""
    store, stage, ref = open_store(spec), CENTRES.of(), INGEST.of("reference")
    i = spec.interpretation
    fp = stage_fingerprint(store, stage, i.interpretations_per_class, i.seed)
    preds = store.read(ref["predictions"])
    n_classes = store.shape(ref["logits"])[1]
    predicted = np.unique(preds)
    if len(predicted) < 2 and store.all_zero(ref["features"], spec.chunk_size):
        raise ValueError(f"ψ at layer {spec.model['layer']!r} is zero for every reference image (a dead layer: every "
                         "activation is cut by its ReLU), so the model gives every image the same logits and RI has "
                         "nothing to separate. Check the checkpoint (`model.checkpoint`) and the input normalisation "
                         "(`data.mean`, `data.std`), or choose another `model.layer`.")
    if len(predicted) < 2:
        raise ValueError(f"The model predicts every reference image as class {predicted.tolist()}: RI needs at "
                         "least two predicted classes (D(x) would be empty). Use a better-trained model or a "
                         "more varied reference set.")
    if store.stage_complete(stage.name, fp):
        return {"n_centres": store.shape(stage["input_index"])[0]}
    store.prepare(stage, fp, {})
    feats = store.read(ref["features"])
    k, clamped = i.interpretations_per_class * n_classes, []
    if k > len(feats):
        clamped.append(f"interpretation.interpretations_per_class = {i.interpretations_per_class} x {n_classes} "
                       f"classes = {k} interpretations is more than the {len(feats)} reference images; clamped to "
                       f"{len(feats)}. Lower interpretations_per_class or add reference images.")
        logger().warning(clamped[0])
        k = len(feats)
    zero = int((feats.reshape(len(feats), -1) == 0).all(1).sum())
    if zero:
        logger().warning(f"{zero} of {len(feats)} reference images have an all-zero ψ at layer "
                         f"{spec.model['layer']!r}: they are one point for k-means and the boundaries.")
    store.set_attrs(interpretations_clamped=clamped, zero_features_reference=zero)
    c = kmeans_centres(feats, k, seed=i.seed)
    for name, value in (("vectors", c.centres), ("labels", c.labels), ("input_index", c.input_index),
                        ("predicted_class", preds[c.input_index])):
        store.write(stage[name], value)
    store.mark_unit_done(stage.name, 0)
    store.finish_stage(stage.name)
    return {"n_centres": len(c.input_index)}
