"""Explaining new images (:meth:`repint.Interpretations.explain`) against plain batched inference of
the same model on the same images, and its peak memory at 4x the images (chunk by chunk).

Every measurement runs in a fresh process. The throughput's has glibc's malloc as ``repint explain``
has it: the ingest task fixes the mmap threshold of the process it runs in
(:func:`repint.tasks.common.bound_chunk_memory`), which triples ``explain``'s time (each buffer above
128 KiB, a chunk's heat maps among them, is then mapped and faulted in afresh), so neither the
``ingest`` lines run before in the same ``repint bench`` nor building the store (:func:`explain_store`,
itself in a child) may leave it set where the line is measured. The memory line's children fix it on
purpose (:func:`bench_explain_memory`)."""

from __future__ import annotations

import atexit
import functools
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from repint.app.bench.common import CHILD_ENV, Result, alternating, med, result, rounded
from repint.app.bench.ingest import PeakRSS, rss_kib

EXPLAIN_MIN_RATIO = 0.7
EXPLAIN_CHUNK = 256  # images per ri.explain call, as `repint explain --chunk-size` cuts its files
SIMILAR_K = 4  # similar reference images per image, `repint explain --top`'s default
ENV_STORE = "REPINT_BENCH_EXPLAIN_STORE"  # an existing store to measure instead of building one


def explain_store(tmp: str, q: int = 50, per_class: int = 3, epochs: int = 2, seed: int = 0) -> str:
    """A store ``Interpretations.load`` opens, built in ``tmp`` by the pipeline's own tasks (called
    directly, ``.fn``: no Prefect): the digits (all reference and unseen images, 32x32 RGB) through a
    ``vgg-small`` trained ``epochs`` epochs on the reference images (seed ``seed``), ingest, k-means centres
    (``per_class`` per class), ``q`` boundaries per centre, sign bits, greedy polytopes and RI's
    interpretations. Returns the store's path."""
    import torch

    from repint.config import Config
    from repint.data import DigitsSource
    from repint.flows.spec import build_spec
    from repint.model import Classifier
    from repint.nets import VGGNet, train_classifier
    from repint.storage.layout import INGEST, INTERPRET, POLYTOPES, SIGNS
    from repint.tasks.boundaries import prepare_signs, sample_boundaries, sign_chunk
    from repint.tasks.centres import compute_centres
    from repint.tasks.ingest import ingest_chunk, prepare_ingest
    from repint.tasks.interpret import interpret_centre, prepare_interpretations
    from repint.tasks.solve import prepare_polytopes, solve_centre
    from repint.tasks.stages import finish_stage
    from repint.variants import Variant

    ckpt = Path(tmp, "vgg-small.pt")
    torch.manual_seed(seed)
    net = VGGNet(num_classes=10, image_size=32)
    if epochs:  # a freshly initialised net predicts every digit as one class: RI needs two at least
        ref = DigitsSource(split="reference")
        train_classifier(Classifier(net, (0.5,) * 3, (0.25,) * 3), ref.load(np.arange(len(ref.labels))), ref.labels,
                         epochs=epochs, seed=seed, device="cpu")
    torch.save(net.state_dict(), ckpt)
    cfg = Config(name="bench-explain")
    cfg.model.checkpoint = str(ckpt)
    cfg.interpretation.q, cfg.interpretation.interpretations_per_class = q, per_class
    cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
    spec = build_spec(cfg, str(Path(tmp, "out")))
    for split in ("reference", "unseen"):
        for c in prepare_ingest.fn(spec, split)["pending"]:
            ingest_chunk.fn(spec, split, c)
        finish_stage.fn(spec, INGEST.of(split).name)
    compute_centres.fn(spec)
    sample_boundaries.fn(spec)
    for split in ("reference", "unseen"):
        for c in prepare_signs.fn(spec, split):
            sign_chunk.fn(spec, split, c)
        finish_stage.fn(spec, SIGNS.of(split).name)
    for v in prepare_polytopes.fn(spec):
        solve_centre.fn(spec, v)
    finish_stage.fn(spec, POLYTOPES.of().name)
    ri = Variant.parse("RI")
    for v in prepare_interpretations.fn(spec, ri):
        interpret_centre.fn(spec, ri, v)
    finish_stage.fn(spec, INTERPRET.of(ri.key).name)
    return str(spec.store)


class quiet_store_warnings:
    """The bench's store holds no evaluation, so its reuse settings are the defaults, and
    ``Interpretations.settings`` may say so on the ``repint`` logger at every ``explain`` call: errors
    only, while a line runs (the defaults are what the evaluation uses)."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("repint")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def run_child(fn: str, args: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 900) -> Any:
    """``fn(args)`` of this module in a fresh process (``env`` added to its environment), its JSON result."""
    code = (f"import json, sys; from repint.app.bench.explain import {fn}; "
            f"print(json.dumps({fn}(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, **CHILD_ENV, **(env or {})}, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"bench child {fn} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def explain_store_child(args: dict[str, Any]) -> str:
    return explain_store(args["tmp"])


@functools.lru_cache(maxsize=1)
def bench_store() -> str:
    """:func:`explain_store`, built once per process (both explain lines use it) in a child process
    (the ingest's malloc setting stays there), removed at exit."""
    tmp = tempfile.mkdtemp(prefix="repint-bench-explain-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return str(run_child("explain_store_child", {"tmp": tmp}))


def unseen_images(store: str, n: int) -> np.ndarray:
    """The store's unseen images, tiled to ``n`` (``[n, C, H, W]`` float32 in ``[0, 1]``)."""
    from repint.data import source_from_spec
    from repint.storage.store import FeatureStore

    src = source_from_spec(dict(FeatureStore(store, mode="r").attrs["data_unseen"]))
    x = src.load(np.arange(len(src)))
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))


def explain_chunks(ri: Any, x: np.ndarray, chunk: int, k: int | None) -> int:
    """``ri.explain`` chunk by chunk, as ``repint explain`` does (``similar(k)`` of each chunk too,
    unless ``k`` is None); keeps nothing. Returns how many images were explained."""
    done = 0
    for lo in range(0, len(x), chunk):
        r = ri.explain(x[lo: lo + chunk])
        if k is not None:
            r.similar(k)
        done += len(r)
    return done


def chunk_phases(ri: Any, x: np.ndarray, chunk: int, k: int) -> dict[str, float]:
    """Where a chunk's time goes (median ms over the chunks of one more pass, untimed in the ratio):
    ``explain_features``'s steps one by one as it runs them (sign bits, assignment, the method's heat
    maps and kept pixels per interpretation), ψ and logits before them and ``similar(k)`` after, and
    plain inference of the same chunk."""
    from repint.explain import assign_images
    from repint.signs import sign_matrix
    from repint.storage.interpretations import one_blas_thread
    from repint.tasks.common import batched_forward

    m, s = ri.method("RI"), ri.settings("RI")
    out: dict[str, list[float]] = {}

    def clock(name: str, t: float) -> float:
        now = time.perf_counter()
        out.setdefault(name, []).append(now - t)
        return now

    for lo in range(0, len(x), chunk):
        xc = x[lo: lo + chunk]
        gc.collect()
        t = time.perf_counter()
        batched_forward(ri.split.composed, xc, ri.batch_size, ri.device)
        t = clock("plain_inference", t)
        feats, logits = ri.forward(xc)
        t = clock("forward_psi_logits", t)
        with one_blas_thread():  # as explain_features runs them
            signs = sign_matrix(feats, ri.W, ri.b)
            t = clock("sign_bits", t)
            a = assign_images(feats, logits, signs, ri.centres, ri.centre_class, ri.polytope_boundaries,
                              ri.polytope_orientation, s["fallback"], m.uses_polytope)
            t = clock("assignment", t)
        for v in np.unique(a.interpretation):
            sel = a.interpretation == v
            m.reused_maps(ri.interpretation("RI", int(v)), xc[sel], feats[sel], (s["keep_fraction"],))
        t = clock("heatmaps_and_kept", t)
        r = ri.explain_features(xc, feats, logits, "RI", [str(i) for i in range(len(xc))], m, s)  # all of them
        t = clock("explain_features", t)
        r.similar(k)  # Eq. 6; each centre's projections are cached (ri) since the first chunks
        clock("similar", t)
    return {name: round(1e3 * med(v), 2) for name, v in out.items()}


def measure_explain(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process (:func:`bench_explain`): on the store ``args["store"]``, ``ri.explain``
    of ``args["n"]`` images chunk by chunk with and without ``similar(k)``, and plain batched inference
    of the same split model on the same images, alternating rounds (``args["repeats"]``) after a
    warm-up round; then :func:`chunk_phases`."""
    import torch

    from repint import Interpretations
    from repint.tasks.common import batched_forward

    n, chunk, k = args["n"], args["chunk"], args["k"]
    ri = Interpretations.load(args["store"])
    x = unseen_images(args["store"], n)
    bs, dev, model = ri.batch_size, torch.device("cpu"), ri.split.composed

    def plain() -> None:
        batched_forward(model, x, bs, dev)

    def explained() -> None:
        explain_chunks(ri, x, chunk, None)

    def with_similar() -> None:
        explain_chunks(ri, x, chunk, k)

    with quiet_store_warnings():
        times = alternating({"plain": plain, "explain": explained, "explain+similar": with_similar},
                            args["repeats"])
        phases = chunk_phases(ri, x, chunk, k)
        r = ri.explain(x)
    return {"times": times, "phases": phases, "batch_size": bs, "torch_threads": torch.get_num_threads(),
            "centres": ri.n_interpretations, "covered_share": round(float(r.covered.mean()), 3),
            "interpretations_per_chunk": round(float(np.mean(
                [len(np.unique(r.interpretation[lo: lo + chunk])) for lo in range(0, n, chunk)])), 1),
            "mean_polytope_size": round(float((ri.polytope_boundaries >= 0).sum(1).mean()), 2)}


def bench_explain(n: int, repeats: int, min_ratio: float = EXPLAIN_MIN_RATIO, chunk: int = EXPLAIN_CHUNK,
                  k: int = SIMILAR_K, store: str | None = None, torch_threads: int | None = None) -> Result:
    """``ri.explain`` of ``n`` images in chunks of ``chunk``, each with ``similar(k)`` (the ratio's
    figure), and the same without ``similar`` (reported), against plain batched inference of the same
    split model (``ri.split.composed``, ``batched_forward``, ``ri.batch_size`` per batch) on the same
    images in memory; alternating rounds after a warm-up round, medians; in a fresh process
    (:func:`measure_explain`, with ``torch_threads`` intra-op threads, default this process's).
    ``store``: an existing store (default :data:`ENV_STORE` from the environment, else one built by
    :func:`explain_store`)."""
    import torch

    store = store or os.environ.get(ENV_STORE)
    built = store is None
    t = time.perf_counter()
    path = bench_store() if built else store
    build_s = time.perf_counter() - t
    env = {"OMP_NUM_THREADS": str(torch_threads or torch.get_num_threads())}  # as this process (--torch-threads)
    m = run_child("measure_explain", {"store": path, "n": n, "chunk": chunk, "k": k, "repeats": repeats}, env)
    times = m.pop("times")
    ips = {key: n / med(v) for key, v in times.items()}
    ratio = ips["explain+similar"] / ips["plain"]
    source = "digits, vgg-small trained 2 epochs" if built else "store from " + ENV_STORE
    return result(f"explain: {n:,} new images in chunks of {chunk} (ψ, logits, signs, assignment, RI heat maps + "
                  f"kept, similar({k}); {source})", ratio, f">= {min_ratio:g}x", ratio >= min_ratio,
                  f"{ips['explain+similar']:,.0f} img/s ({ips['explain']:,.0f} without similar)",
                  f"{ips['plain']:,.0f} img/s (plain batched inference, batch {m['batch_size']})", n=n, chunk=chunk,
                  similar_k=k, ratio_without_similar=round(ips["explain"] / ips["plain"], 3),
                  images_per_s={key: round(v, 1) for key, v in ips.items()},
                  times_s={key: rounded(v) for key, v in times.items()},
                  per_chunk_median_ms=m.pop("phases"), store_built_s=round(build_s, 1) if built else None,
                  store=None if built else store, process="fresh (glibc malloc defaults)", **m)


def explain_child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: ``ri.explain`` of ``args["n"]`` images in chunks (with ``similar``),
    the peak RSS increment over the state after loading the store and the images and one warm-up
    chunk (KiB)."""
    import torch  # noqa: F401  (imported before the baseline)

    from repint import Interpretations

    ri = Interpretations.load(args["store"])
    x = unseen_images(args["store"], args["n"])
    with quiet_store_warnings():
        explain_chunks(ri, x[: args["chunk"]], args["chunk"], args["k"])  # warm-up: torch's first passes
        gc.collect()
        base = rss_kib()
        t = time.perf_counter()
        with PeakRSS() as peak:
            done = explain_chunks(ri, x, args["chunk"], args["k"])
    return {"n": done, "seconds": round(time.perf_counter() - t, 2), "peak_method": peak.method,
            "rss_kib": {"baseline": base, "peak_during_explain": peak.peak, "increment": peak.peak - base}}


def bench_explain_memory(n: int, factor: int = 4, max_ratio: float = 1.2, chunk: int = EXPLAIN_CHUNK,
                         k: int = SIMILAR_K, repeats: int = 3, fixed_mmap_threshold: bool = True,
                         store: str | None = None) -> Result:
    """Ratio of ``explain``'s peak-RSS increment for ``factor * n`` images to that for ``n``, chunk by
    chunk with ``similar(k)``, each in a fresh process, one after the other, ``repeats`` times each in
    turn: medians. Bounded by the chunk, not by the images, when the ratio is near 1.

    A chunk's working set is small (about 25 MiB at 256 images of 32x32), and glibc's dynamic mmap
    threshold moves one process's peak by 5 MiB or more from run to run (15-33 MiB measured at 256 to
    16,000 images, with no trend): ``fixed_mmap_threshold`` gives the children a fixed one (128 KiB, as
    the ingest task sets for itself, :func:`repint.tasks.common.bound_chunk_memory`), which makes the
    peak repeatable to about 1 MiB."""
    store = store or os.environ.get(ENV_STORE)
    path = store or bench_store()
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap_threshold else {}
    runs: dict[int, list[dict[str, Any]]] = {n: [], factor * n: []}
    for _ in range(repeats):
        for size in runs:
            runs[size].append(run_child("explain_child", {"store": path, "n": size, "chunk": chunk, "k": k}, env))
    inc = {size: [r["rss_kib"]["increment"] for r in rs] for size, rs in runs.items()}
    small, big = med(inc[n]), med(inc[factor * n])
    ratio = big / max(small, 1)
    return result(f"explain memory: peak RSS increment at {factor * n:,} vs {n:,} images (chunks of {chunk}, "
                  f"similar({k}), fresh processes, median of {repeats}"
                  + ", malloc mmap threshold fixed" * fixed_mmap_threshold + ")", ratio,
                  f"<= {max_ratio:g}x (within {100 * (max_ratio - 1):.0f}%)", ratio <= max_ratio,
                  f"{big / 1024:,.1f} MiB", f"{small / 1024:,.1f} MiB", chunk=chunk, similar_k=k,
                  increments_mib={str(size): [round(v / 1024, 1) for v in vs] for size, vs in inc.items()},
                  peak_method=runs[n][0]["peak_method"], env=env, runs={str(size): rs for size, rs in runs.items()},
                  store=store)
