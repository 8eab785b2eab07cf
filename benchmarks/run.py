#!/usr/bin/env python
"""RepInt benchmarks: the greedy solver's speed, the ingest's memory bound, evaluation throughput, the demo's wall time.

Each measurement returns a dict ``{name, value, unit, target, pass, details}``; ``main`` prints a
markdown table and writes everything as JSON. Targets compare medians and ratios measured in the same
run, so that they mean something on a shared, noisy machine. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

Result = dict[str, Any]
HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"
CHILD_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def result(name: str, value: float | None, unit: str, target: str, passed: bool | None, **details: Any) -> Result:
    return {"name": name, "value": value, "unit": unit, "target": target, "pass": passed, "details": details}


def shown(r: Result) -> str:
    """The measured column: ``r["shown"]`` where a line sets it (value and context), else the value."""
    return r.get("shown") or fmt(r["value"], r["unit"])


# ---------------------------------------------------------------------------------------------- solver
def sign_problem(n: int, q: int, seed: int = 0, dim: int = 32, n_classes: int = 10
                 ) -> tuple[np.ndarray, int, np.ndarray]:
    """A realistic solver input: random features, random hyperplanes through the data cloud, classes
    from a random linear labelling. Returns ``(signs [n, q], input_index, other_class)``."""
    from repint.signs import sign_matrix

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    w = rng.standard_normal((q, dim), dtype=np.float32)
    b = 0.5 * rng.standard_normal(q)
    pred = (x @ rng.standard_normal((dim, n_classes), dtype=np.float32)).argmax(1)
    return sign_matrix(x, w, b), 0, pred != pred[0]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls of ``fn`` after one untimed warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def bench_solver(n: int, q: int, limit_ms: float, repeats: int) -> Result:
    """Median time of one ``greedy_polytope`` solve (one centre) on an ``n x q`` sign matrix."""
    from repint.solver import greedy_polytope

    signs, i, other = sign_problem(n, q)
    times, poly = timed(lambda: greedy_polytope(signs, i, other), repeats)
    if len(poly.boundaries) < 2:
        raise RuntimeError(f"Trivial greedy path at N={n}, Q={q}: the benchmark input needs a harder problem.")
    ms = 1e3 * statistics.median(times)
    return result(f"solver N={n:,} Q={q}", ms, "ms", f"< {limit_ms:g} ms", ms < limit_ms, n=n, q=q,
                  times_ms=[round(1e3 * t, 2) for t in times], polytope_size=len(poly.boundaries), tau=poly.tau,
                  covered=poly.n_covered, purity=poly.purity)


def bench_solver_vs_dense(n: int, q: int, min_ratio: float, repeats: int) -> Result:
    """Speed-up of ``greedy_polytope`` over the reference ``greedy_polytope_dense`` (same result asserted)."""
    from repint.solver import greedy_polytope, greedy_polytope_dense

    signs, i, other = sign_problem(n, q)
    fast_times, fast = timed(lambda: greedy_polytope(signs, i, other), repeats)
    t = time.perf_counter()
    dense = greedy_polytope_dense(signs, i, other)
    dense_s = time.perf_counter() - t
    if not (np.array_equal(fast.boundaries, dense.boundaries) and np.array_equal(fast.covered, dense.covered)
            and fast.tau == dense.tau):
        raise AssertionError(f"greedy_polytope and greedy_polytope_dense disagree at N={n}, Q={q}.")
    fast_s = statistics.median(fast_times)
    ratio = dense_s / fast_s
    return result(f"solver speed-up vs dense N={n:,} Q={q}", ratio, "x", f">= {min_ratio:g}x", ratio >= min_ratio,
                  fast_ms=round(1e3 * fast_s, 2), dense_ms=round(1e3 * dense_s, 2),
                  polytope_size=len(fast.boundaries), identical=True)


# ---------------------------------------------------------------------------------------------- ingest
def rss_kib(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident set size of this process, in KiB."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))  # type: ignore[union-attr]
    except OSError:
        import psutil  # not Linux: only the current RSS is available, peaks are sampled

        return psutil.Process().memory_info().rss // 1024


class PeakRSS:
    """Peak RSS inside a ``with`` block: Linux resets the high-water mark (``/proc/self/clear_refs``),
    elsewhere a thread samples the RSS every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0, threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self._thread = "VmHWM after clear_refs", None
        except OSError:
            self.method, self._thread = "sampled every 1 ms", threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_kib())

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = rss_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_kib())


def ingest_child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: the ingest flow's work for the reference split, its tasks called
    directly (``.fn``, no Prefect), with the memory accounted step by step (KiB)."""
    import torch  # noqa: F401  (imported before the baseline: its import is not the ingest's)

    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.tasks.common import load_split, source
    from repint.tasks.ingest import finish_stage, ingest_chunk, prepare_ingest

    mem = {"after_imports": rss_kib()}
    cfg = Config(name="bench")
    cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", args["reference"], args["unseen"]
    cfg.model.checkpoint = args["checkpoint"]
    cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
    spec = build_spec(cfg, args["out"])
    source(spec, "reference")
    load_split(spec)
    gc.collect()
    mem["baseline"] = rss_kib()  # imports + the whole source in memory (ArraySource) + the model
    t = time.perf_counter()
    with PeakRSS() as peak:
        info = prepare_ingest.fn(spec, "reference")
        for c in info["pending"]:
            ingest_chunk.fn(spec, "reference", c)
        finish_stage.fn(spec, "ingest-reference")
    mem["peak_during_ingest"], mem["after_ingest"] = peak.peak, rss_kib()
    mem["ingest_increment"] = mem["peak_during_ingest"] - mem["baseline"]
    return {"n": info["n"], "chunks": len(info["pending"]), "chunk_size": spec.chunk_size,
            "seconds": time.perf_counter() - t, "peak_method": peak.method, "rss_kib": mem}


def write_images(path: Path, n: int, seed: int, size: int = 32) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.random((n, 3, size, size), dtype=np.float32),
             labels=np.arange(n, dtype=np.int64) % 10)
    return str(path)


def run_children(jobs: list[dict[str, Any]], env: dict[str, str], timeout: float = 900) -> list[dict[str, Any]]:
    """:func:`ingest_child` in one fresh process per job, run concurrently (RSS is per process)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--ingest-child", json.dumps(job)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **CHILD_ENV, **env})
             for job in jobs]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"ingest child failed ({proc.returncode}):\n{stderr[-3000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def bench_ingest_memory(n: int, factor: int = 4, max_ratio: float = 1.2, fixed_mmap_threshold: bool = False) -> Result:
    """Ratio of the ingest's peak-RSS increment for ``factor * n`` images to that for ``n`` (fresh processes).

    With ``fixed_mmap_threshold``, glibc's malloc gets a fixed mmap threshold (128 KiB), so freed chunk
    buffers go back to the OS and the peak follows live memory instead of heap fragmentation."""
    import torch

    from repint.nets import VGGNet

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap_threshold else {}
    with tempfile.TemporaryDirectory(prefix="repint-bench-ingest-") as tmp:
        ckpt = Path(tmp, "vgg-small.pt")
        torch.manual_seed(0)
        torch.save(VGGNet(num_classes=10, image_size=32).state_dict(), ckpt)
        unseen = write_images(Path(tmp, "unseen.npz"), 20, seed=1)
        runs = run_children([{"reference": write_images(Path(tmp, f"reference-{size}.npz"), size, seed=0),
                              "unseen": unseen, "checkpoint": str(ckpt), "out": str(Path(tmp, f"out-{size}"))}
                             for size in (n, factor * n)], env)
    small, big = (r["rss_kib"]["ingest_increment"] for r in runs)
    ratio = big / max(small, 1)
    name = f"ingest memory {factor * n:,} vs {n:,} images" + (", malloc mmap threshold 128 KiB" * fixed_mmap_threshold)
    return result(name, ratio, "x", f"<= {max_ratio:g}x", ratio <= max_ratio, env=env,
                  increments_mib=[round(r["rss_kib"]["ingest_increment"] / 1024, 1) for r in runs], runs=runs)


# ---------------------------------------------------------------------------------------------- evaluation
@functools.lru_cache(maxsize=1)
def eval_setup(seed: int = 0) -> dict[str, Any]:
    """What the evaluation benchmarks share: a randomly initialised ``vgg-small`` (``build_model``) in
    the pipeline's :class:`~repint.model.Classifier` wrapper, ψ = ``"net." + net.psi_layer``; the
    digits' unseen split (32x32, RGB) with their ψ features (as the ingest stores them: computed here
    once, never timed); reference images for the input image and ACE's cluster and random images."""
    import torch

    from repint.data import DigitsSource
    from repint.methods.gradcam import layer_activations_batch
    from repint.model import Classifier
    from repint.nets import build_model

    torch.manual_seed(seed)
    ref, unseen = DigitsSource(split="reference"), DigitsSource(split="unseen")
    ref_images = ref.load(np.arange(len(ref.labels)))
    net = build_model("vgg-small", 10, 32)
    mean = tuple(float(v) for v in ref_images.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in ref_images.std(axis=(0, 2, 3)))
    model = Classifier(net, mean, std).eval()
    layer = "net." + net.psi_layer
    images = unseen.load(np.arange(len(unseen.labels)))
    return {"model": model, "layer": layer, "images": images, "features": layer_activations_batch(model, layer, images),
            "ref_images": ref_images, "ref_labels": ref.labels}


def interpretation_input(setup: dict[str, Any], ace_images: int, n_boundaries: int = 5, seed: int = 0) -> Any:
    """The centre's :class:`InterpretationInput`: reference image 0, its ψ and predicted class;
    ``n_boundaries`` random hyperplanes in ψ-space (RI); the first ``ace_images`` other reference
    images of its label and as many of other labels (ACE's cluster and random images)."""
    import torch

    from repint.methods import InterpretationInput
    from repint.methods.gradcam import layer_activations

    model, layer, ref, labels = setup["model"], setup["layer"], setup["ref_images"], setup["ref_labels"]
    image = ref[0]
    feats = layer_activations(model, layer, image)
    with torch.no_grad():
        cls = int(model(torch.as_tensor(image[None])).argmax(1)[0])
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_boundaries, feats.size)).astype(np.float32)
    b = -(W @ feats.reshape(-1)) + rng.standard_normal(n_boundaries).astype(np.float32)
    same, other = np.flatnonzero(labels == labels[0])[1:], np.flatnonzero(labels != labels[0])
    return InterpretationInput(model=model, layer=layer, image=image, features=feats, predicted_class=cls,
                               boundaries_W=W, boundaries_b=b, cluster_images=ref[same[:ace_images]],
                               random_images=ref[rng.choice(other, ace_images, replace=False)])


def _once(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def segment_cache_reset(method: str) -> Callable[[], None] | None:
    """ACE keeps each image's SLIC labels and patch activations in a process-wide cache
    (``repint.methods.ace._CACHE``, keyed by the image's bytes); a fresh cache before each call times a
    run's first evaluation of its images, not the cache. ``None`` for methods without one."""
    from repint.methods import ace

    if method != "ACE" or not hasattr(ace, "_CACHE"):
        return None

    def reset() -> None:
        ace._CACHE = type(ace._CACHE)()

    return reset


def bench_evaluation(method: str, n: int, min_ratio: float | None, repeats: int, ace_images: int = 20,
                     batch_size: int = 128, fraction: float = 0.2) -> Result:
    """Evaluation throughput of one method next to plain batched inference, on the same ``n`` images.

    Timed per call (``evaluate_chunk``'s work for one centre, without the store): ``interpret`` once
    on the centre's input image, ``keep_masks`` for the ``n`` images from their precomputed ψ,
    ``mask_images``, ``batched_forward`` of the masked images. Plain: ``batched_forward`` of the
    ``n`` images. One untimed warm-up of each, then ``repeats`` rounds alternating plain and method
    (so that the machine's load drifts alike for both); images/s from the medians. The method's
    warm-up runs on 2 images (ACE: 2 discovery images), the plain one on all ``n``. A method's
    per-image cache (ACE's segments) is emptied before each call; one more call with it full is
    reported as ``warm_cache_images_per_s``."""
    from repint.methods import get_method
    from repint.metrics import mask_images
    from repint.tasks.common import batched_forward

    setup = eval_setup()
    model, layer = setup["model"], setup["layer"]
    images, feats = setup["images"][:n], setup["features"][:n]
    n = len(images)
    inp = interpretation_input(setup, ace_images)
    m = get_method(method).bind(model, layer)
    dev = next(model.parameters()).device
    phases: list[dict[str, float]] = []
    last: dict[str, dict[str, np.ndarray]] = {}

    def evaluate(inp: Any = inp, images: np.ndarray = images, feats: np.ndarray = feats) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        interp = m.interpret(inp)
        t1 = time.perf_counter()
        keep = m.keep_masks(interp, images, feats, fraction)
        t2 = time.perf_counter()
        batched_forward(model, mask_images(images, keep), batch_size, dev)
        phases.append({"interpret": t1 - t0, "keep_masks": t2 - t1, "mask_and_forward": time.perf_counter() - t2})
        last["interp"] = interp
        return interp

    def plain() -> np.ndarray:
        return batched_forward(model, images, batch_size, dev)

    reset = segment_cache_reset(method) or (lambda: None)
    plain()  # warms the batch shapes of the masked forward too
    evaluate(interpretation_input(setup, 2), images[:2], feats[:2])  # small: ACE's warm-up would take seconds
    phases.clear()
    plain_times, method_times = [], []
    for _ in range(repeats):
        gc.collect()
        reset()
        plain_times.append(_once(plain))
        method_times.append(_once(evaluate))
    phase_medians = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
    concepts = len(last["interp"].get("concepts", ()))  # ACE: of the last timed call
    warm = None if segment_cache_reset(method) is None else n / _once(evaluate)  # cache full from the last call
    plain_ips, method_ips = n / statistics.median(plain_times), n / statistics.median(method_times)
    ratio = method_ips / plain_ips
    extra = f" ({ace_images} discovery + {ace_images} random images)" if method == "ACE" else ""
    name = f"evaluation {method} N={n:,}{extra}: interpret 1 centre + keep-masks + masked forward, vs plain forward"
    target = "-" if min_ratio is None else f">= {min_ratio:g}x plain"
    passed = None if min_ratio is None else ratio >= min_ratio
    details: dict[str, Any] = {
        "method": method, "n": n, "batch_size": batch_size, "keep_fraction": fraction,
        "images_per_s": round(method_ips, 1), "plain_images_per_s": round(plain_ips, 1),
        "times_s": [round(t, 4) for t in method_times], "plain_times_s": [round(t, 4) for t in plain_times],
        "phases_median_s": phase_medians}
    if method == "ACE":
        details["ace_images"] = ace_images
        details["concepts"] = concepts
    if warm is not None:
        details["segment_cache"] = "emptied before each timed call"
        details["warm_cache_images_per_s"] = round(warm, 1)
    if method == "RI":
        details["boundaries"] = len(inp.boundaries_W)
    r = result(name, ratio, "x", target, passed, **details)
    r["shown"] = f"{method_ips:,.0f} vs {plain_ips:,.0f} img/s = {ratio:.2f}x"
    return r


def bench_scorecam_batching(min_ratio: float, repeats: int) -> Result:
    """Score-CAM's channel passes in batches (``ScoreCAM.batch_size`` masked images per forward) over
    one forward per channel (``batch_size=1``, the same code): ratio of the median times of
    ``score_cam_weights`` on the centre's input image, alternating; the weights are asserted equal."""
    from repint.methods.gradcam import layer_activations
    from repint.methods.scorecam import ScoreCAM, score_cam_weights

    setup = eval_setup()
    inp = interpretation_input(setup, ace_images=0)
    acts = layer_activations(inp.model, inp.layer, inp.image)
    batch = ScoreCAM.batch_size

    def batched() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, batch)

    def per_channel() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, 1)

    batched()  # warm-up; batch-1 passes were warmed by interpretation_input (on a loaded machine they take seconds)
    fast_times, slow_times = [], []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fast = batched()
        fast_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        slow = per_channel()
        slow_times.append(time.perf_counter() - t)
    diff = float(np.abs(fast - slow).max())
    if not np.allclose(fast, slow, rtol=1e-5, atol=1e-9):
        raise AssertionError(f"Score-CAM weights differ between batched and per-channel passes (max |diff| {diff:g}).")
    fast_s, slow_s = statistics.median(fast_times), statistics.median(slow_times)
    ratio = slow_s / fast_s
    k = acts.shape[0]
    return result(f"Score-CAM weights K={k}: batched ({batch} per forward) speed-up vs one forward per channel",
                  ratio, "x", f">= {min_ratio:g}x", ratio >= min_ratio, channels=k, batch_size=batch,
                  batched_ms=round(1e3 * fast_s, 2), per_channel_ms=round(1e3 * slow_s, 2),
                  batched_times_ms=[round(1e3 * t, 2) for t in fast_times],
                  per_channel_times_ms=[round(1e3 * t, 2) for t in slow_times],
                  max_abs_diff=diff, bitwise_identical=bool(np.array_equal(fast, slow)), equal_rtol_1e_5=True)


# ---------------------------------------------------------------------------------------------- demo
def bench_demo(limit_s: float = 180, timeout: float = 1200) -> Result:
    """``repint demo`` end to end in a subprocess with an empty model cache (training included)."""
    with tempfile.TemporaryDirectory(prefix="repint-bench-demo-") as tmp:
        out = Path(tmp, "demo")
        env = {**os.environ, **CHILD_ENV, "REPINT_CACHE": str(Path(tmp, "cache"))}
        cmd = [sys.executable, "-m", "repint.cli", "demo", "--out", str(out)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return result("demo end to end (training included)", None, "s", f"< {limit_s:g} s", False,
                          error=f"timed out after {timeout:g} s")
        wall = time.perf_counter() - t
        if proc.returncode:
            return result("demo end to end (training included)", wall, "s", f"< {limit_s:g} s", False,
                          error=f"exit code {proc.returncode}", stderr_tail=proc.stderr[-3000:])
        timings = json.loads(Path(out, "summary.json").read_text()).get("timings_s", {})
    return result("demo end to end (training included)", wall, "s", f"< {limit_s:g} s", wall < limit_s,
                  timings_s={k: round(v, 2) for k, v in timings.items()})


# ---------------------------------------------------------------------------------------------- report
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} {unit}" if unit in ("x", "s") else f"{value:.1f} {unit}"


def table(results: list[Result]) -> str:
    lines = ["| benchmark | measured | target | result |", "|---|---:|---:|:---:|"]
    for r in results:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]
        lines.append(f"| {r['name']} | {shown(r)} | {r['target']} | {verdict} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}


# Targets on the ratio of evaluation throughput to plain batched inference of the same images.
EVAL_MIN_RATIO: dict[str, float | None] = {"RI": 0.3, "Grad-CAM": 0.3, "Grad-CAM++": 0.3, "Score-CAM": 0.3,
                                           "ACE": None}
SCORECAM_MIN_RATIO = 2.0
GROUPS = ("solver", "ingest", "evaluation", "score-cam", "demo")
EVAL_METHODS = ("RI", "Grad-CAM", "Grad-CAM++", "Score-CAM", "ACE")  # ACE last


def plan(quick: bool, skip_demo: bool, only: set[str] | None = None) -> list[Callable[[], Result]]:
    """The measurements to run, in order; ``only`` keeps those of the named groups (:data:`GROUPS`)."""
    repeats = 3 if quick else 7
    steps: list[tuple[str, Callable[[], Result]]] = [
        ("solver", lambda: bench_solver(100_000, 50, limit_ms=50, repeats=repeats)),
        ("solver", lambda: bench_solver_vs_dense(100_000, 200, min_ratio=20, repeats=repeats)),
    ]
    if not quick:
        steps.append(("solver", lambda: bench_solver(1_000_000, 50, limit_ms=1000, repeats=3)))
    steps.append(("ingest", lambda: bench_ingest_memory(2_000)))
    if not quick:
        steps.append(("ingest", lambda: bench_ingest_memory(2_000, fixed_mmap_threshold=True)))
    n, eval_repeats = (256, 3) if quick else (512, 5)
    for method in EVAL_METHODS[:-1]:
        steps.append(("evaluation", lambda m=method: bench_evaluation(m, n, EVAL_MIN_RATIO[m], eval_repeats)))
    # ACE segments every image with SLIC and runs the model on every segment: seconds per call, so
    # fewer images, discovery images and repeats
    ace_n, ace_images, ace_repeats = (8, 5, 1) if quick else (12, 6, 2)
    steps.append(("evaluation", lambda: bench_evaluation("ACE", ace_n, EVAL_MIN_RATIO["ACE"], ace_repeats,
                                                         ace_images=ace_images)))
    # 3 repeats in both modes: on a loaded machine one forward per channel can take seconds (see README)
    steps.append(("score-cam", lambda: bench_scorecam_batching(min_ratio=SCORECAM_MIN_RATIO, repeats=3)))
    if not skip_demo:
        steps.append(("demo", bench_demo))
    return [fn for group, fn in steps if only is None or group in only]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, no N=1,000,000 solver point, no allocator diagnostic (about a minute)")
    p.add_argument("--skip-demo", action="store_true", help="do not run `repint demo` (a few minutes)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    p.add_argument("--only", type=lambda v: set(v.split(",")), metavar="GROUP[,GROUP]",
                   help=f"run only these groups of lines: {', '.join(GROUPS)}")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch.set_num_threads(N) in this process (default: torch's own, one per core)")
    p.add_argument("--ingest-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ingest_child:
        print(json.dumps(ingest_child(json.loads(args.ingest_child))))
        return 0
    if args.only and args.only - set(GROUPS):
        p.error(f"unknown group(s) {', '.join(sorted(args.only - set(GROUPS)))}; choose from {', '.join(GROUPS)}")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    results = []
    for step in plan(args.quick, args.skip_demo, args.only):
        t = time.perf_counter()
        results.append(step())
        r = results[-1]
        print(f"{r['name']}: {shown(r)} ({time.perf_counter() - t:.0f} s)", file=sys.stderr,
              flush=True)
    info = machine()
    print(table(results))
    print(f"\n{info['cpus']} CPUs, load average {info['load_average_1_5_15_min']} (1, 5, 15 min) at the end; "
          f"results written to {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                     "options": {"quick": args.quick, "skip_demo": args.skip_demo,
                                                 "only": sorted(args.only) if args.only else None,
                                                 "torch_threads": args.torch_threads},
                                     "machine": info, "results": results}, indent=2, default=float) + "\n")
    return 1 if args.strict and any(r["pass"] is False for r in results) else 0

if __name__ == "__main__":
    sys.exit(main())
