"""A study: the whole DAG ``runs`` times with seeds ``seed, seed+1, ...`` and RI's variants beside RI,
reported like the paper's Table 1 (mean ± std per method)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from repint.flows.run import pipeline, with_default_model
from repint.tasks.html import write_html_report
from repint.tasks.runspec import RunSpec
from repint.tasks.study import write_study
from repint.variants import OWN_STORE_KEYS, VARIANT_KEYS, Variant

__all__ = ["run_spec", "study", "study_specs", "variant_plan"]


def _store_base(store: str) -> str:
    return store[:-5] if store.endswith(".zarr") else store


def run_spec(spec: RunSpec, run: int, runs: int) -> RunSpec:
    """The spec of run ``run`` of a study: its own seed (k-means, Q sampling, ACE's random set), its
    own reference subsample where the reference set is sampled per class, store and output folder."""
    if runs == 1:
        return spec
    reference = spec.reference
    if reference.get("per_class") is not None and "seed" in reference:
        reference = {**reference, "seed": int(reference["seed"]) + run}
    return spec.model_copy(update={
        "interpretation": spec.interpretation.model_copy(update={"seed": spec.interpretation.seed + run}),
        "reference": reference,
        "store": f"{_store_base(spec.store)}-run{run}.zarr", "out_dir": str(Path(spec.out_dir) / f"run-{run}")})


def variant_plan(spec: RunSpec) -> tuple[RunSpec, list[RunSpec]]:
    """RI's variants (``evaluation.variants``): those that change only the orientation are extra
    methods on the run's own store (same polytopes, other heat maps); those that change Q (``q``,
    ``q_sampling``) or the polytopes (``solver``), :data:`~repint.variants.OWN_STORE_KEYS`, get a store
    of their own in which only that variant is evaluated."""
    run_store_keys = set(VARIANT_KEYS) - set(OWN_STORE_KEYS)
    extra, own = [], []
    for j, v in enumerate(spec.evaluation.variants):
        variant = Variant.of("RI", v)
        if set(v) <= run_store_keys:
            extra.append(variant.label)
            continue
        own.append(spec.model_copy(update={
            "interpretation": variant.interpretation(spec.interpretation),
            "evaluation": spec.evaluation.model_copy(update={"methods": [variant.label], "case_studies": 0,
                                                             "variants": []}),
            "store": f"{_store_base(spec.store)}-variant{j}.zarr",
            "out_dir": str(Path(spec.out_dir) / f"variant-{j}")}))
    methods = [*spec.evaluation.methods, *[m for m in extra if m not in spec.evaluation.methods]]
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"methods": methods})}), own


def study_specs(spec: RunSpec, runs: int) -> list[RunSpec]:
    """The specs of a study's runs (RI's own-store variants aside): what ``report.html`` reads."""
    main, _ = variant_plan(spec)
    return [run_spec(main, i, runs) for i in range(runs)]


@flow(name="study", flow_run_name="study-{spec.dataset}-{runs}-runs")
def study(spec: RunSpec, runs: int = 1, html: bool = True) -> dict[str, Any]:
    """The whole DAG ``runs`` times with seeds ``seed, seed+1, ...`` (k-means, Q sampling, reference
    subsample), one model, and RI's variants beside RI; reports mean ± std per method like the paper's
    Table 1, every per-image record as CSV, and ``report.html`` (unless ``html`` is false: a caller
    that adds to the summary first, as ``reinterpret`` does, writes the page once itself)."""
    t0 = time.perf_counter()
    spec, _ = with_default_model(spec)
    _, variants = variant_plan(spec)
    specs = study_specs(spec, runs)
    summaries, variant_specs = [], []
    for i, s in enumerate(specs):
        summary = pipeline(s)
        for v in variants:
            vs = run_spec(v, i, runs)
            summary["methods"].update(pipeline(vs)["methods"])
            variant_specs.append((vs, i))
        summaries.append(summary)
    summary = write_study(specs, summaries, spec.out_dir, {"total": time.perf_counter() - t0}, variant_specs)
    if html:
        write_html_report(specs, summary, spec.out_dir)
    return summary
