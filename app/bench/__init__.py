"""RepInt's performance suite: every stage as a ratio against its limit, measured side by side.

Each measurement returns a dict ``{stage, measured, reference, ratio, target, pass, details}``: the
stage's own figure, the limit it is measured against (plain torch inference, an in-memory BLAS
product, a reference implementation, one Dask worker, ...) measured in the same run, alternating
with it, and their ratio. ``main`` prints a markdown table and writes JSON and markdown files.
``repint bench``, ``python -m repint.app.bench`` and ``python benchmarks/run.py`` run it; see
``benchmarks/README.md``.

Modules: ``common`` (the result record, alternating timing, medians), one per group of measurements
(``ingest``, ``signs``, ``solver``, ``evaluation``, ``fidelity``, ``explain``, ``pipeline``, ``kmeans``,
``demo``), ``targets`` (the plan, its targets and the table) and ``main`` (the options and the run).
"""

from repint.app.bench.common import (
    CHILD_ENV,
    DEFAULT_OUT,
    Result,
    alternating,
    load_average,
    med,
    once,
    result,
    rounded,
    timed,
)
from repint.app.bench.demo import bench_demo
from repint.app.bench.evaluation import (
    bench_evaluation,
    bench_scorecam_batching,
    eval_setup,
    interpretation_input,
    segment_cache_reset,
)
from repint.app.bench.explain import (
    EXPLAIN_MIN_RATIO,
    bench_explain,
    bench_explain_memory,
    bench_store,
    explain_child,
    explain_store,
    measure_explain,
)
from repint.app.bench.fidelity import bench_metric, forwards_per_image
from repint.app.bench.ingest import (
    PeakRSS,
    bench_ingest_memory,
    bench_ingest_throughput,
    ingest_child,
    ingest_setup,
    rss_kib,
    run_children,
    run_ingest,
    write_images,
)
from repint.app.bench.kmeans import bench_data_dir, bench_kmeans, synthetic_features
from repint.app.bench.main import add_arguments, main, parser, run
from repint.app.bench.pipeline import (
    SCALE_PSI,
    TreeSampler,
    bench_pipeline_memory,
    run_config,
    run_pipeline,
    scale_net,
    write_inputs,
)
from repint.app.bench.signs import bench_signs, bench_signs_dask, sign_chunk_fn, sign_store
from repint.app.bench.solver import bench_solver, bench_solver_vs_dense, sign_problem
from repint.app.bench.targets import (
    DEFAULT_GROUPS,
    EVAL_MIN_RATIO,
    GROUPS,
    METRIC_MIN_RATIO,
    PSI_SHAPE,
    SCORECAM_MIN_RATIO,
    SLOW_METHODS,
    machine,
    plan,
    table,
)

__all__ = [
    "CHILD_ENV", "DEFAULT_GROUPS", "DEFAULT_OUT", "EVAL_MIN_RATIO", "EXPLAIN_MIN_RATIO", "bench_explain",
    "bench_explain_memory", "bench_store", "explain_child", "explain_store", "measure_explain", "GROUPS",
    "METRIC_MIN_RATIO", "bench_metric",
    "forwards_per_image", "PSI_SHAPE", "SCORECAM_MIN_RATIO",
    "SLOW_METHODS", "PeakRSS", "Result", "add_arguments", "alternating", "bench_demo", "bench_evaluation",
    "bench_ingest_memory", "bench_ingest_throughput", "bench_scorecam_batching", "bench_signs", "bench_signs_dask",
    "bench_solver", "bench_solver_vs_dense", "eval_setup", "ingest_child", "ingest_setup", "interpretation_input",
    "load_average", "machine", "main", "med", "once", "parser", "plan", "result", "rounded", "rss_kib",
    "run", "run_children", "run_ingest", "segment_cache_reset", "sign_chunk_fn", "sign_problem", "sign_store",
    "table", "timed", "write_images", "SCALE_PSI", "TreeSampler", "bench_data_dir", "bench_kmeans",
    "bench_pipeline_memory", "run_config", "run_pipeline", "scale_net", "synthetic_features", "write_inputs",
]
