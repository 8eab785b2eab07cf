"""The scale harness of issue 17 (items 3 and 4): synthetic ψ 512x7x7 data and a model that load through RepInt
as a user's would, `benchmarks/scale_run.py` reporting every stage of a real `repint run` with its time and the
peak RSS of the process tree, and the k-means line on a Dask cluster against scikit-learn in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from repint.app.bench.pipeline import SCALE_PSI, TreeSampler, phases, psi_and_predictions, scale_model, write_inputs

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["start-up (Prefect server, model, preflight)", "ingest", "centres (k-means)",
          "Q (Dask cluster start-up, sampling the boundaries)", "signs", "solves", "assignment (unseen images)",
          "interpretations and evaluation", "report (summary, figures, report.html)"]


def test_the_synthetic_data_and_model_load_through_repint_with_psi_512x7x7(tmp_path):
    """An `.npz` of 3x8x8 images and a plain state dict of `module:function`'s net: the run's spec splits it at
    `relu` (ψ 512x7x7, a piecewise-linear head that is not affine), ψ is sparse, and the ten classes are all
    predicted; ingest's ψ is the harness's own."""
    import torch

    from repint.app.bench.pipeline import run_config
    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.tasks.common import batched_forward, load_split, source

    inputs = write_inputs(tmp_path, 512, 64)
    cfg = Config.model_validate(run_config(inputs, per_class=1, metrics=["ad-ai"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an affine head would warn
        spec = build_spec(cfg, tmp_path / "out")
    sm = load_split(spec)
    assert spec.model["layer"] == "relu" and not sm.affine
    images = source(spec, "reference").load(np.arange(64))
    assert images.shape == (64, 3, 8, 8) and images.dtype == np.float32
    psi = batched_forward(sm.psi, images, 32, torch.device("cpu"))
    assert psi.shape == (64, *SCALE_PSI)
    mine, _ = psi_and_predictions(scale_model(0), (images * 255).round().astype(np.uint8))
    np.testing.assert_allclose(psi, mine, rtol=1e-4, atol=1e-4)
    assert 0.6 < (psi == 0).mean() < 0.9
    shares = np.asarray(inputs["reference"]["class_shares"])
    assert (shares > 0.03).sum() == 10, shares


def test_stages_are_cut_along_the_runs_log_lines():
    events = [(3.0, "[repint] ingest-reference: 0/2 chunks"), (4.0, "[repint] ingest-unseen: 0/1 chunks"),
              (5.0, "12:00:00 | INFO | Flow run 'pipeline-x' - ingest done in 2.0 s"),
              (7.0, "... centres done in 2.0 s"), (9.0, "[repint] signs-reference: 0/2 chunks"),
              (10.0, "[repint] signs-unseen: 0/1 chunks"), (12.0, "... boundaries done in 7.0 s"),
              (12.5, "[repint] solve: 0/20 centres"), (14.0, "... interpret done in 2.0 s"),
              (15.0, "[repint] interpret-ri: 0/20 centres"), (16.0, "[repint] evaluate-ri: 0/1 chunks"),
              (17.0, "[repint] interpret-grad-cam: 0/20 centres"), (19.0, "... evaluate done in 5.0 s")]
    got = phases(events, end=25.0)
    assert [name for name, _, _ in got] == STAGES
    assert [(lo, hi) for _, lo, hi in got] == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 12.5), (12.5, 14), (14, 15),
                                               (15, 19), (19, 25)]


def test_the_tree_sampler_counts_the_memory_of_child_processes():
    code = "import numpy as np, time; x = np.ones(50_000_000); time.sleep(3)"  # 400 MB in the child
    with TreeSampler(os.getpid(), every=0.1) as tree:
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)
        child.wait(timeout=60)
    assert max(s[3] for s in tree.samples) >= 2
    alone = min(s[1] for s in tree.samples[:2] + tree.samples[-1:])
    assert max(s[1] for s in tree.samples) - alone > 350 * 1024
    assert any(kib > 380 * 1024 for _, kib in tree.hwm_kib.values())


@pytest.mark.slow
def test_a_tiny_scale_run_reports_every_stage_with_its_time_and_peak_rss(tmp_path):
    """`benchmarks/scale_run.py --n 300`: a real `repint run` (Dask runner) whose every stage shows in the JSON and
    the printed table, with seconds and the process tree's peak RSS (the Dask workers counted)."""
    out = tmp_path / "scale_run.json"
    args = ["--n", "300", "--unseen", "100", "--per-class", "1", "--metrics", "ad-ai", "--case-studies", "0",
            "--work", str(tmp_path), "--json", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_run.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["n"] == run["n_reference"] == 300 and run["n_unseen"] == 100 and run["psi"] == list(SCALE_PSI)
    assert [s["stage"] for s in run["stages"]] == STAGES
    assert all(s["seconds"] > 0 and s["peak_rss_mib"] > 0 for s in run["stages"])
    assert run["peak_rss_mib"] == max(s["peak_rss_mib"] for s in run["stages"]) > 0
    assert run["max_processes"] >= 4  # the run, its Prefect server, two Dask workers
    # the run's own process: the largest (torch, the stages' orchestration), below the tree's peak
    from repint.app.bench.pipeline import run_process_hwm_mib

    assert 200 < run_process_hwm_mib(run) < run["peak_rss_mib"]
    assert set(run["flow_seconds"]) == {"ingest", "centres", "boundaries", "interpret", "evaluate"}
    assert sum(s["seconds"] for s in run["stages"]) == pytest.approx(run["seconds"], abs=0.1)
    assert "| signs |" in proc.stdout and "| **whole run** |" in proc.stdout
    assert not (tmp_path / "run-300").exists()  # the store is deleted unless --keep


@pytest.mark.slow
def test_the_kmeans_line_fits_on_a_dask_cluster_and_in_memory(tmp_path):
    import zarr

    from repint.app.bench.kmeans import bench_kmeans, synthetic_features
    from repint.app.bench.pipeline import synthetic_images
    from repint.app.bench.targets import plan

    assert [g for g, _ in plan(quick=True, only={"pipeline", "kmeans"})] == ["pipeline", "kmeans"]
    path = synthetic_features(300, chunk=128, folder=tmp_path)
    assert zarr.open_array(str(path)).attrs["rows"] == 384  # whole chunks
    assert synthetic_features(600, chunk=128, folder=tmp_path) == path  # grown, rows 0..383 kept
    arr = zarr.open_array(str(path))
    assert arr.shape == (640, *SCALE_PSI) and arr.attrs["rows"] == 640
    expected, _ = psi_and_predictions(scale_model(0), synthetic_images(350, 420))
    np.testing.assert_array_equal(arr[350:420], expected)
    r = bench_kmeans(600, n_clusters=4, chunk=128, max_memory_rows=300, folder=tmp_path)
    d = r["details"]
    assert d["dask"]["n"] == 600 and d["memory"]["n"] == 300 and d["dask"]["algorithm"] == "dask"
    assert d["dask"]["n_centres"] == d["memory"]["n_centres"] == 4
    assert r["ratio"] == pytest.approx(d["dask"]["images_per_s"] / d["memory"]["images_per_s"], rel=1e-6)
    assert r["ratio"] > 0 and r["pass"] is None
