"""Interpret: one solve per centre, by the configured solver (``interpretation.solver``, :mod:`repint.solver`;
by default the greedy of Algorithm 1)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numpy as np
from prefect import task

from repint.boundaries import boundary_columns
from repint.signs import packed_columns, select_signs
from repint.solver import get_solver, solvers
from repint.storage.layout import BOUNDARIES, CENTRES, INGEST, POLYTOPES, SIGNS
from repint.tasks.common import _libc, open_store, unit_key
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import stage_fingerprint

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_HEAP = {"lock": threading.Lock(), "solving": 0}


@contextlib.contextmanager
def solver_heap() -> Iterator[None]:
    """While a solve runs in this process: glibc serves buffers up to 32 MiB from the heap and keeps up to
    64 MiB free at its top, as its own dynamic thresholds would. A solve allocates many short-lived
    buffers of a few MiB (packed columns, unpacked signs); a fixed 128 KiB mmap threshold maps and faults
    each one in afresh, which makes a solve about twice as slow. Dask's workers get that setting from the
    nanny (``MALLOC_TRIM_THRESHOLD_=65536``), the flow's process from ``bound_chunk_memory`` (ingest).
    When the last concurrent solve ends, the fixed 128 KiB mmap threshold and the trim threshold of the
    environment (glibc's 128 KiB without one) come back and the free heap is returned to the OS."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    with _HEAP["lock"]:
        if not _HEAP["solving"]:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        _HEAP["solving"] += 1
    try:
        yield
    finally:
        with _HEAP["lock"]:
            _HEAP["solving"] -= 1
            if not _HEAP["solving"]:
                libc.mallopt(_M_TRIM_THRESHOLD, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 128 << 10)))
                libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
                libc.malloc_trim(0)


def solver_params(spec: RunSpec) -> tuple[str, ...]:
    """What the polytopes' fingerprint adds for the solver: its name, only when it is not the default
    (stores solved before solvers were registered keep their fingerprint)."""
    name = spec.interpretation.solver
    return () if name == solvers()[0] else (name,)


def pending_solve_work(spec: RunSpec) -> int:
    """How much solving the interpret stage has left, before it is prepared (the boundaries complete):
    pending centres x reference images (one solve costs about that many popcount steps); 0 when the
    stage is complete for these inputs. The centres of a stage begun for these inputs count from its
    completion records; a stage of other inputs, which ``prepare-polytopes`` resets, counts them all."""
    store, stage = open_store(spec, mode="r"), POLYTOPES.of()
    fp = stage_fingerprint(store, stage, *solver_params(spec))
    if store.stage_complete(stage.name, fp):
        return 0
    v = store.shape(CENTRES.of()["input_index"])[0]
    done_path = f"_done/{stage.name}"
    begun = store.root.attrs.get("stages", {}).get(stage.name, {}).get("fingerprint") == fp
    pending = len(store.pending_units(stage.name)) if begun and done_path in store and \
        store.shape(done_path) == (v,) else v
    return pending * store.shape(INGEST.of("reference")["predictions"])[0]


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
    of its Q, from the sign bits. What it is sent (the run spec, no arrays, and the centre) and what it
    returns (four numbers) are small: a worker process reads its inputs from the store and writes its
    polytope there, then its completion record, so any process can solve any centre."""
    store, stage, ref = open_store(spec), POLYTOPES.of(), INGEST.of("reference")
    owner = store.read(BOUNDARIES.of()["owner"])
    cols = boundary_columns(owner, centre)
    with solver_heap():
        byte_cols = packed_columns(cols)  # only the bytes of this centre's Q: boundary-search has V x q columns
        signs = select_signs(store.read(SIGNS.of("reference")[""], (slice(None), byte_cols)), byte_cols, cols)
        preds = store.read(ref["predictions"])
        x = int(store.read(CENTRES.of()["input_index"])[centre])
        p = get_solver(spec.interpretation.solver)(signs, x, preds != preds[x])
        del signs
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
