"""Interpretations V: k-means centres of the reference features (|V| = per class x C)."""

from __future__ import annotations

import numpy as np
from prefect import task

from repint.centres import kmeans_centres
from repint.storage import fingerprint_params
from repint.tasks.common import RunSpec, logger, open_store


def _all_zero(array, chunk: int) -> bool:
    """Whether every value of a stored array is zero, read chunk by chunk (stops at the first non-zero)."""
    return all(not np.any(array[lo: lo + chunk]) for lo in range(0, array.shape[0], chunk))


def centres_fingerprint(spec: RunSpec) -> str:
    store = open_store(spec, mode="r")
    ingest = store.attrs["stages"]["ingest-reference"]["fingerprint"]
    i = spec.interpretation
    return fingerprint_params("centres", ingest, i["interpretations_per_class"], i["seed"])


@task(name="centres", task_run_name="centres", retries=1)
def compute_centres(spec: RunSpec) -> dict:
    """k-means on flattened ψ(R); the input of each interpretation is the reference image nearest
    its centre. Refuses a reference set predicted as a single class."""
    store = open_store(spec)
    store.require_complete("ingest-reference")
    fp = centres_fingerprint(spec)
    preds = store.read("reference/predictions")
    n_classes = store.shape("reference/logits")[1]
    predicted = np.unique(preds)
    if len(predicted) < 2 and _all_zero(store.root["reference/features"], spec.chunk_size):
        raise ValueError(f"ψ at layer {spec.model['layer']!r} is zero for every reference image (a dead layer: every "
                         "activation is cut by its ReLU), so the model gives every image the same logits and RI has "
                         "nothing to separate. Check the checkpoint (`model.checkpoint`) and the input normalisation "
                         "(`data.mean`, `data.std`), or choose another `model.layer`.")
    if len(predicted) < 2:
        raise ValueError(f"The model predicts every reference image as class {predicted.tolist()}: RI needs at "
                         "least two predicted classes (D(x) would be empty). Use a better-trained model or a "
                         "more varied reference set.")
    if store.stage_complete("centres", fp):
        return {"n_centres": store.shape("centres/input_index")[0]}
    store.begin_stage("centres", fp, 1)
    feats = store.read("reference/features")
    per_class = spec.interpretation["interpretations_per_class"]
    k, clamped = per_class * n_classes, []
    if k > len(feats):
        clamped.append(f"interpretation.interpretations_per_class = {per_class} x {n_classes} classes = {k} "
                       f"interpretations is more than the {len(feats)} reference images; clamped to {len(feats)}. "
                       "Lower interpretations_per_class or add reference images.")
        logger().warning(clamped[0])
        k = len(feats)
    zero = int((feats.reshape(len(feats), -1) == 0).all(1).sum())
    if zero:
        logger().warning(f"{zero} of {len(feats)} reference images have an all-zero ψ at layer "
                         f"{spec.model['layer']!r}: they are one point for k-means and the boundaries.")
    store.set_attrs(interpretations_clamped=clamped, zero_features_reference=zero)
    c = kmeans_centres(feats, k, seed=spec.interpretation["seed"])
    store.write("centres/vectors", c.centres)
    store.write("centres/labels", c.labels)
    store.write("centres/input_index", c.input_index)
    store.write("centres/predicted_class", preds[c.input_index])
    store.mark_unit_done("centres", 0)
    store.finish_stage("centres")
    return {"n_centres": len(c.input_index)}
