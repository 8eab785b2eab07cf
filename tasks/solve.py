"""Interpret: one solve per centre, by the configured solver (``interpretation.solver``, :mod:`repint.solver`;
by default the greedy of Algorithm 1)."""

from __future__ import annotations

import numpy as np
from prefect import task

from repint.boundaries import boundary_columns
from repint.signs import unpack_signs
from repint.solver import get_solver, solvers
from repint.storage.layout import BOUNDARIES, CENTRES, INGEST, POLYTOPES, SIGNS
from repint.tasks.common import open_store, unit_key
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import stage_fingerprint


def solver_params(spec: RunSpec) -> tuple[str, ...]:
    """What the polytopes' fingerprint adds for the solver: its name, only when it is not the default
    (stores solved before solvers were registered keep their fingerprint)."""
    name = spec.interpretation.solver
    return () if name == solvers()[0] else (name,)


@task(name="prepare-polytopes", task_run_name="prepare-polytopes")
def prepare_polytopes(spec: RunSpec) -> list[int]:
    store, stage = open_store(spec), POLYTOPES.of()
    fp = stage_fingerprint(store, stage, *solver_params(spec))
    if store.stage_complete(stage.name, fp):
        return []
    v = store.shape(CENTRES.of()["input_index"])[0]
    owner = store.read(BOUNDARIES.of()["owner"])
    q_max = max(len(boundary_columns(owner, c)) for c in range(v))
    return store.prepare(stage, fp, {"V": v, "Q": q_max, "N": store.shape(INGEST.of("reference")["predictions"])[0]})


@task(name="solve-centre", task_run_name="solve-centre-{centre}", retries=1,
      cache_key_fn=unit_key(POLYTOPES))
def solve_centre(spec: RunSpec, centre: int) -> dict:
    """The configured solver (Algorithm 1 by default) for the input of one centre, over the boundaries
    of its Q, from the sign bits."""
    store, stage, ref = open_store(spec), POLYTOPES.of(), INGEST.of("reference")
    owner = store.read(BOUNDARIES.of()["owner"])
    cols = boundary_columns(owner, centre)
    signs = unpack_signs(store.read(SIGNS.of("reference")[""]), len(owner))[:, cols]
    preds = store.read(ref["predictions"])
    x = int(store.read(CENTRES.of()["input_index"])[centre])
    p = get_solver(spec.interpretation.solver)(signs, x, preds != preds[x])
    ids = cols[p.boundaries]
    row = np.full(store.shape(stage["boundaries"])[1], -1, dtype=np.int64)
    row[: len(ids)] = ids
    orient = np.zeros(len(row), dtype=bool)
    orient[: len(ids)] = p.orientation
    for name, value in (("boundaries", row), ("orientation", orient), ("covered", p.covered), ("tau", p.tau),
                        ("delta", p.delta), ("n_covered", p.n_covered), ("n_other_covered", p.n_other_covered),
                        ("size", len(ids)), ("purity", p.purity)):
        store.write_region(stage[name], centre, value)
    store.mark_unit_done(stage.name, centre)
    return {"centre": centre, "size": len(ids), "n_covered": p.n_covered, "tau": p.tau}
