"""The CUDA path's parts that run anywhere: ψ written by parallel writers (``runtime.writers``) gives
the very store one writer gives, a writer's error fails its chunk and frees its lane, and
``benchmarks/gpu_pipeline.sh`` runs the pipeline end to end (here on the CPU, tiny) and prints every
stage's speed against plain forward passes."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest
import torch

from repint.config import Config
from repint.storage import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_pipeline.py"
N, CHUNK = 96, 16


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """96 RGB 32x32 images (random colours plus noise) and a randomly initialised vgg-small."""
    from repint.nets import build_model

    folder = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(1)
    images = np.clip(rng.integers(-40, 40, (N, 3, 32, 32)) + rng.integers(40, 215, (N, 3, 1, 1)), 0, 255)
    np.savez(folder / "images.npz", images=images.astype(np.uint8), labels=rng.integers(0, 3, N))
    torch.manual_seed(0)
    torch.save(build_model("vgg-small", 3, 32).state_dict(), folder / "net.pt")
    return folder


def spec_for(arrays: Path, out: Path, writers: int):  # noqa: ANN201
    from repint.flows.spec import build_spec

    cfg = Config(name="writers")
    images = str(arrays / "images.npz")
    cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", images, images
    cfg.model.checkpoint = str(arrays / "net.pt")
    cfg.runtime.device, cfg.runtime.chunk_size, cfg.runtime.batch_size = "cpu", CHUNK, 8
    cfg.runtime.writers = writers
    return build_spec(cfg, out)


def ingest(spec) -> list:  # noqa: ANN001
    """The reference split's chunks on as many threads as the flow should give them (writers + 1)."""
    from repint.tasks.ingest import ingest_chunk, ingest_threads, prepare_ingest

    pending = prepare_ingest.fn(spec, "reference")["pending"]
    with ThreadPoolExecutor(ingest_threads(spec)) as pool:
        futures = [pool.submit(ingest_chunk.fn, spec, "reference", c) for c in pending]
        done, late = wait(futures, timeout=120)
    assert not late, "ingest tasks still waiting after 120 s: a writer lane was never given back"
    return [f.result() for f in futures]


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk object of the reference split's per-chunk arrays and its completion records."""
    out = {}
    for array in ("reference/features", "reference/logits", "reference/predictions", "_done/ingest-reference"):
        for f in sorted((store / array / "c").rglob("*")):
            if f.is_file():
                out[str(f.relative_to(store))] = f.read_bytes()
    return out


def test_parallel_writers_write_the_store_one_writer_writes(arrays, tmp_path):
    from repint.tasks.ingest import ingest_lanes

    one, four = spec_for(arrays, tmp_path / "one", 1), spec_for(arrays, tmp_path / "four", 4)
    assert [r["chunk"] for r in ingest(one)] == list(range(N // CHUNK))
    ingest(four)
    a, b = chunk_files(Path(one.store)), chunk_files(Path(four.store))
    assert len([k for k in a if k.startswith("reference/features/")]) == N // CHUNK  # one Zarr chunk per task
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)  # byte for byte
    sa, sb = FeatureStore(one.store), FeatureStore(four.store)
    assert sa.pending_units("ingest-reference") == sb.pending_units("ingest-reference") == []
    np.testing.assert_array_equal(sa.read("reference/features"), sb.read("reference/features"))
    lanes1, lanes4 = ingest_lanes(one), ingest_lanes(four)
    assert lanes1.peak == 1  # two threads, one of them waiting on the device or the writer: one write at a time
    assert 1 <= lanes4.peak <= 4 and lanes1.busy == lanes4.busy == 0
    assert lanes1.written >= N // CHUNK and lanes4.written >= N // CHUNK


def test_lanes_let_as_many_writes_run_at_once_as_writers_and_no_more():
    """Two lanes: two chunks write at once (both taken while neither is given back), a third waits until
    one is given back; the forward pass is one chunk at a time."""
    import threading

    from repint.tasks.ingest import IngestLanes

    lanes, took, go = IngestLanes(2), [], threading.Event()

    def write(i: int) -> None:
        lanes.take_writer()
        took.append(i)
        go.wait(10)
        lanes.release_writer(True)

    first = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in first:
        t.start()
    for _ in range(200):
        if len(took) == 2:
            break
        threading.Event().wait(0.01)
    assert sorted(took) == [0, 1] and lanes.busy == lanes.peak == 2  # both lanes busy at once
    third = threading.Thread(target=write, args=(2,))
    third.start()
    third.join(0.3)
    assert took == took[:2] and len(took) == 2  # the third waits for a lane
    go.set()
    for t in [*first, third]:
        t.join(10)
    assert sorted(took) == [0, 1, 2] and lanes.busy == 0 and lanes.peak == 2 and lanes.written == 3
    with lanes.forward():
        assert not lanes._device.acquire(blocking=False)  # one forward pass at a time


def test_a_failed_write_fails_its_chunk_and_frees_its_lane(arrays, tmp_path):
    from repint.tasks.ingest import ingest_chunk, ingest_lanes, prepare_ingest
    from repint.tasks.stages import finish_stage

    spec = spec_for(arrays, tmp_path / "s", 1)
    prepare_ingest.fn(spec, "reference")
    store = FeatureStore(spec.store)
    del store.root["reference/features"]  # the write of ψ has nowhere to go
    lanes = ingest_lanes(spec)
    written = lanes.written
    with pytest.raises(KeyError, match="reference/features"):
        ingest_chunk.fn(spec, "reference", 2)
    assert lanes.busy == 0 and lanes.written == written
    assert 2 in store.pending_units("ingest-reference")  # no completion record for what was not written
    ingest(spec)  # prepare makes the array again; the one lane was given back, so nothing waits for it
    finish_stage.fn(spec, "ingest-reference")
    assert store.read("reference/features").shape[0] == N


def test_device_lacks_lists_what_the_image_does_not_have(tmp_path):
    kinds = tmp_path / "KINDS.md"
    kinds.write_text("# kinds\n\nnvidia-h200: ... Packages: prefect, zarr, numpy, Typing_Extensions.\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--device-lacks", "--kinds", str(kinds)], capture_output=True,
                         text=True, check=True).stdout.split()
    names = {line.split("==")[0] for line in out}
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in out)
    assert {"pydantic", "dask", "grad-cam", "numcodecs"} <= names  # needed by repint, not in that image
    assert not names & {"prefect", "zarr", "numpy", "torch", "torchvision", "repint"}
    assert not any(n.startswith("nvidia-") for n in names)  # torch's own CUDA libraries stay the image's
    assert "typing-extensions" in names  # there, but carried anyway (prefect wants a recent one)


@pytest.mark.slow
def test_the_script_runs_the_pipeline_and_prints_every_stage_against_plain_forward(tmp_path):
    """``gpu_pipeline.sh`` as on a device, on the CPU at 32 px: 32 + 16 images, 3 chunks, 2 writers."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "GPU_PIPELINE_LIMIT": "300"}
    args = ["--device", "cpu", "--images", "32", "--unseen", "16", "--image-size", "32", "--classes", "2",
            "--chunk", "16", "--batch", "16", "--writers", "2", "--q", "8", "--per-class", "1", "--metrics", "ad-ai",
            "--repeats", "1"]
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_pipeline.sh"), *args], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=360)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = (tmp_path / "out" / "gpu_pipeline.md").read_text()
    assert table.strip() in run.stdout and (tmp_path / "out" / "gpu_pipeline.log").stat().st_size > 0
    speeds = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([a-z ]+) \|.*\| ([^ |]+)x \|$", table, re.M)}
    stages = ["plain forward", "ingest", "centres", "boundaries", "interpret", "evaluate", "report", "total"]
    assert list(speeds) == stages
    assert all(math.isfinite(v) and v > 0 for v in speeds.values()), speeds
    assert speeds["plain forward"] == 1.0
    info = json.loads((tmp_path / "out" / "gpu_pipeline.json").read_text())
    seconds = info["seconds"]
    assert seconds["total"] >= sum(seconds[s] for s in stages[1:-1])  # the stages lie inside the whole run
    assert info["device"] == "cpu" and info["torch"] == torch.__version__ and info["psi_shape"] == [512, 2, 2]
    assert (info["n_reference"], info["n_unseen"]) == (32, 16) and info["methods"] == ["RI", "Grad-CAM"]
    assert info["chunks_written"] == 3 and 1 <= info["writers_busy_peak"] <= 2
    assert "| ingest | 48 |" in table and "2 writers" in table
