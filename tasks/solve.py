"""Interpret: one greedy solve (Algorithm 1) per centre."""

from __future__ import annotations

import numpy as np
from prefect import task

from repint.signs import unpack_signs
from repint.solver import greedy_polytope
from repint.storage import fingerprint_params
from repint.tasks.common import RunSpec, open_store, unit_key


def boundary_columns(owner: np.ndarray, centre: int) -> np.ndarray:
    """Boundary ids of Q for one centre: the shared ones (owner -1) and the centre's own."""
    return np.flatnonzero((owner == -1) | (owner == centre))


@task(name="prepare-polytopes", task_run_name="prepare-polytopes")
def prepare_polytopes(spec: RunSpec) -> list[int]:
    store = open_store(spec)
    store.require_complete("signs-reference")
    st = store.attrs["stages"]
    fp = fingerprint_params("polytopes", st["signs-reference"]["fingerprint"])
    if store.stage_complete("polytopes", fp):
        return []
    v = store.shape("centres/input_index")[0]
    n = store.shape("reference/predictions")[0]
    owner = store.read("boundaries/owner")
    q_max = max(len(boundary_columns(owner, c)) for c in range(v))
    store.begin_stage("polytopes", fp, v, arrays=["polytopes"])
    store.require("polytopes/boundaries", (v, q_max), "i8", (1, q_max), fill_value=-1)
    store.require("polytopes/orientation", (v, q_max), bool, (1, q_max), fill_value=False)
    store.require("polytopes/covered", (v, n), bool, (1, n), fill_value=False)
    for name in ("tau", "delta", "n_covered", "n_other_covered", "size"):
        store.require(f"polytopes/{name}", (v,), "i8", (1,), fill_value=-1)
    store.require("polytopes/purity", (v,), "f8", (1,), fill_value=np.nan)
    return store.pending_units("polytopes")


@task(name="solve-centre", task_run_name="solve-centre-{centre}", retries=1,
      cache_key_fn=unit_key("polytopes"))
def solve_centre(spec: RunSpec, centre: int) -> dict:
    """Algorithm 1 for the input of one centre, over the boundaries of its Q, from the sign bits."""
    store = open_store(spec)
    owner = store.read("boundaries/owner")
    cols = boundary_columns(owner, centre)
    signs = unpack_signs(store.read("signs/reference"), len(owner))[:, cols]
    preds = store.read("reference/predictions")
    x = int(store.read("centres/input_index")[centre])
    p = greedy_polytope(signs, x, preds != preds[x])
    ids = cols[p.boundaries]
    row = np.full(store.shape("polytopes/boundaries")[1], -1, dtype=np.int64)
    row[: len(ids)] = ids
    orient = np.zeros(len(row), dtype=bool)
    orient[: len(ids)] = p.orientation
    for name, value in (("boundaries", row), ("orientation", orient), ("covered", p.covered), ("tau", p.tau),
                        ("delta", p.delta), ("n_covered", p.n_covered), ("n_other_covered", p.n_other_covered),
                        ("size", len(ids)), ("purity", p.purity)):
        store.write_region(f"polytopes/{name}", centre, value)
    store.mark_unit_done("polytopes", centre)
    return {"centre": centre, "size": len(ids), "n_covered": p.n_covered, "tau": p.tau}
