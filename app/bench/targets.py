"""The plan (which measurement, at which size, against which target) and the markdown table of the results."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from repint.app.bench.common import Result
from repint.app.bench.demo import bench_demo
from repint.app.bench.evaluation import bench_evaluation, bench_scorecam_batching
from repint.app.bench.explain import EXPLAIN_MIN_RATIO, bench_explain, bench_explain_memory
from repint.app.bench.fidelity import bench_metric
from repint.app.bench.ingest import bench_ingest_memory, bench_ingest_throughput
from repint.app.bench.kmeans import bench_kmeans
from repint.app.bench.pipeline import bench_pipeline_memory
from repint.app.bench.signs import bench_signs, bench_signs_dask
from repint.app.bench.solver import bench_solver, bench_solver_vs_dense, bench_solves_parallel
from repint.config import ALL_METHODS
from repint.metrics import METRICS

# Evaluation: throughput of the evaluation stage over plain batched inference of the same images; a
# method without a target here (ACE, or one added to the registry since) is measured and reported.
EVAL_MIN_RATIO: dict[str, float | None] = {"RI": 0.7, "Grad-CAM": 0.7, "Grad-CAM++": 0.7, "Score-CAM": 0.7,
                                           "ACE": None}
# ACE segments every image with SLIC and runs the model on every segment's patch: two orders of
# magnitude below plain inference by design, so fewer images and repeats, measured last
SLOW_METHODS = ("ACE",)
SCORECAM_MIN_RATIO = 5.0
# each faithfulness metric over plain batched inference of as many images as it forwards; ROAD's imputation
# (one sparse solve per batch) is measured against the same target
METRIC_MIN_RATIO: dict[str, float | None] = {"ad-ai": 0.7, "deletion-insertion": 0.7, "road": 0.7,
                                             "representativeness": None}
GROUPS = ("ingest", "signs", "dask", "solver", "evaluation", "metrics", "score-cam", "memory", "explain", "pipeline",
          "kmeans", "demo")
DEFAULT_GROUPS = GROUPS[:-1]  # the demo (minutes, training included) only when asked for
PSI_SHAPE = (64, 8, 8)  # vgg-small's ψ on 32x32 images (the demo's)


def plan(quick: bool, only: set[str] | None = None) -> list[tuple[str, Callable[[], Result]]]:
    """The measurements to run, in the order of the issue's table, as ``(group, fn)``; ``only`` keeps
    those of the named groups (:data:`GROUPS`; default :data:`DEFAULT_GROUPS`). The evaluation is
    measured for every method of :data:`repint.config.ALL_METHODS`."""
    only = set(DEFAULT_GROUPS) if only is None else only
    repeats = 3 if quick else 5
    n_ingest = 1_024 if quick else 4_096
    n_signs = 20_000 if quick else 100_000
    n_eval, eval_repeats = (256, 3) if quick else (512, 5)
    slow_n, ace_images, slow_repeats = (8, 5, 1) if quick else (12, 6, 2)
    steps: list[tuple[str, Callable[[], Result]]] = [
        ("ingest", lambda: bench_ingest_throughput(n_ingest, repeats)),
        ("signs", lambda: bench_signs(n_signs, PSI_SHAPE, 50, repeats)),
        ("signs", lambda: bench_signs(n_signs // 5, PSI_SHAPE, 1000, repeats)),
        ("dask", lambda: bench_signs_dask(n_signs // 5, PSI_SHAPE, 1000, repeats)),
        ("dask", lambda: bench_solves_parallel(200_000, 50, 16 if quick else 32, repeats)),
        ("solver", lambda: bench_solver_vs_dense(100_000, 200, min_ratio=20, repeats=repeats)),
        ("solver", lambda: bench_solver(1_000_000, 50, limit_s=1.0, repeats=repeats)),
    ]
    methods = [m for m in ALL_METHODS if m not in SLOW_METHODS] + [m for m in ALL_METHODS if m in SLOW_METHODS]
    for method in methods:
        n, reps, extra = ((slow_n, slow_repeats, {"ace_images": ace_images}) if method in SLOW_METHODS
                          else (n_eval, eval_repeats, {}))
        steps.append(("evaluation", lambda m=method, n=n, reps=reps, extra=extra:
                      bench_evaluation(m, n, EVAL_MIN_RATIO.get(m), reps, **extra)))
    for metric in METRICS:
        steps.append(("metrics", lambda metric=metric: bench_metric(metric, n_eval, METRIC_MIN_RATIO.get(metric),
                                                                   eval_repeats)))
    steps.append(("score-cam", lambda: bench_scorecam_batching(min_ratio=SCORECAM_MIN_RATIO, repeats=repeats)))
    steps.append(("memory", lambda: bench_ingest_memory(1_000 if quick else 2_000, factor=10)))
    # explaining new images (`repint explain`, the API's `explain`): 1,000 images against plain inference, and
    # its memory at 4,000 against 1,000 (fresh processes), on a store the pipeline's tasks build from the digits
    steps.append(("explain", lambda: bench_explain(1_000, repeats, EXPLAIN_MIN_RATIO)))
    steps.append(("explain", lambda: bench_explain_memory(1_000, factor=4)))
    # the whole pipeline's memory: `repint run` end to end (a subprocess, its process tree sampled) on synthetic
    # ψ 512x7x7 at 10N vs N; k-means on a Dask cluster over N cached synthetic ψ vs scikit-learn in memory
    steps.append(("pipeline", lambda: bench_pipeline_memory(200 if quick else 2_000, factor=10,
                                                            n_unseen=200 if quick else 500)))
    steps.append(("kmeans", lambda: bench_kmeans(4_000 if quick else 200_000, n_clusters=20 if quick else 100)))
    steps.append(("demo", bench_demo))
    return [(g, fn) for g, fn in steps if g in only]


def table(results: list[Result]) -> str:
    """The markdown table: stage, measured, reference, ratio, target, met."""
    lines = ["| stage | measured | reference | ratio | target | met |", "|---|---:|---:|---:|---|:---:|"]
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r["pass"]]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        if r["target"].startswith("under"):
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f} of limit"
        cells = [str(c).replace("|", "\\|") for c in (r["stage"], r["measured"], r["reference"])]
        lines.append(f"| {cells[0]} | {cells[1]} | {cells[2]} | {ratio} | {r['target']} | {met} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the table's foot and bench.json record of the machine."""
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
