"""One flow per part of the DAG: ingest -> centres -> boundaries (Dask) -> interpret -> evaluate.

Each runs alone on an existing store whose earlier stages are complete, and a re-run with the same
inputs does no work twice (stage fingerprints and per-unit completion records in the store, plus
Prefect's task cache). Every stage of units is the same three steps (:func:`run_units`): its
``prepare`` task starts or resumes it and names the pending units, one task per unit, then
``finish-stage``.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow
from prefect.task_runners import ThreadPoolTaskRunner

from repint.flows.progress import track
from repint.flows.runners import preflight_cluster
from repint.storage.layout import EVALUATE, INGEST, INTERPRET, POLYTOPES, SIGNS, SPLITS, parse_stage
from repint.tasks.boundaries import prepare_signs, sample_boundaries, sign_chunk
from repint.tasks.centres import compute_centres
from repint.tasks.evaluate import assign_unseen, evaluate_chunk, prepare_evaluation, summarise_evaluation
from repint.tasks.ingest import ingest_chunk, prepare_ingest
from repint.tasks.interpret import interpret_centre, prepare_interpretations
from repint.tasks.runspec import RunSpec
from repint.tasks.solve import prepare_polytopes, solve_centre
from repint.tasks.stages import finish_stage

__all__ = ["boundaries_flow", "centres_flow", "evaluate_flow", "ingest_flow", "interpret_flow", "run_units"]


def run_units(spec: RunSpec, stage: str, units: list[int], unit_task: Task, *args: Any, description: str,
              key: str | None = None) -> list[Any]:
    """``unit_task(spec, *args, unit)`` for each pending unit of ``stage``, then the stage is finished;
    progress is the artifact ``key`` (default: the stage's name)."""
    kind = parse_stage(stage)
    unit = {"chunks": "chunks", "V": "centres"}.get(kind.kind.units if kind else "", "units")
    out = track([unit_task.submit(spec, *args, u) for u in units], key or stage, description, unit=unit)
    finish_stage(spec, stage)
    return out


@flow(name="ingest", flow_run_name="ingest-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest_flow(spec: RunSpec) -> dict[str, int]:
    """Chunks of reference and unseen images -> ψ, logits and predictions in the store."""
    counts = {}
    for split in SPLITS:
        info = prepare_ingest(spec, split)
        run_units(spec, INGEST.of(split).name, info["pending"], ingest_chunk, split, description=f"ingest {split}")
        counts[split] = info["n"]
    return counts


@flow(name="centres", flow_run_name="centres-{spec.dataset}")
def centres_flow(spec: RunSpec) -> dict[str, int]:
    """k-means centres of the reference features: the interpretations V and their inputs."""
    return compute_centres(spec)


@flow(name="boundaries", flow_run_name="boundaries-{spec.dataset}")
def boundaries_flow(spec: RunSpec) -> dict[str, int]:
    """Sample Q (the boundary-search variant walks from the centres' inputs), then one Dask-parallel
    task per chunk computes that chunk's sign bits."""
    if spec.runtime.dask_address:
        preflight_cluster(spec)  # the store exists now (ingest made it); workers must import repint and reach it
    info = sample_boundaries(spec)
    for split in SPLITS:
        run_units(spec, SIGNS.of(split).name, prepare_signs(spec, split), sign_chunk, split,
                  description=f"signs {split}")
    return info


@flow(name="interpret", flow_run_name="interpret-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def interpret_flow(spec: RunSpec) -> list[dict]:
    """One greedy solve (Algorithm 1) per centre, one task each: on threads by default; ``pipeline`` gives
    it the Dask runner of the boundaries (or, with ``task_runner: threads``, a process pool for a large
    stage: ``repint.flows.runners.solve_runner``), the solver holds the GIL."""
    if spec.runtime.dask_address:
        preflight_cluster(spec)  # run alone on an existing cluster too: workers must import repint and reach it
    return run_units(spec, POLYTOPES.of().name, prepare_polytopes(spec), solve_centre, description="solve polytopes",
                     key="solve")


@flow(name="evaluate", flow_run_name="evaluate-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def evaluate_flow(spec: RunSpec) -> dict[str, dict]:
    """Assign unseen images, build each method's interpretations, mask, run the model, AD/AI."""
    assign_unseen(spec)
    results = {}
    for method in spec.methods:
        interp = method.interpreted  # a variant of the evaluation only (its fallback) reuses its base's
        run_units(spec, INTERPRET.of(interp.key).name, prepare_interpretations(spec, interp), interpret_centre, interp,
                  description=f"interpret {interp}")
        run_units(spec, EVALUATE.of(method.key).name, prepare_evaluation(spec, method), evaluate_chunk, method,
                  description=f"evaluate {method}")
        results[method.label] = summarise_evaluation(spec, method)
    return results
