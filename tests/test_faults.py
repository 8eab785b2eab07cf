"""Faults, for real: `repint run` killed with SIGKILL in the middle of ingest and in the middle of the
sign chunks, then run again; a second run on a store that is being written; a Dask worker killed
while it runs a sign task.

Every run is a real subprocess (its own process group, so SIGKILL takes its local Dask workers with
it, as a crash of the machine would) reporting to the session's Prefect test server. A resumed run
must redo only the chunks without a completion record, and its store must equal that of an
uninterrupted run bit for bit (every array; the attributes except the store's id and the stages'
epochs, see docs/store-layout.md, "Reliability")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _servers import dask_cluster, wait_workers
from conftest import tiny_config, with_model

from repint.signs import sign_bits
from repint.storage import FeatureStore, StoreError
from repint.storage.verify import verify_store

pytestmark = pytest.mark.slow

N_IMAGES, CHUNK = 240, 8  # 30 chunks per split: a kill lands between two of them
N_CHUNKS = N_IMAGES // CHUNK


def _config(path: Path) -> Path:
    cfg = tiny_config(N_IMAGES, 1, 20, runner="dask")  # the default runner: a local Dask cluster
    cfg.runtime.chunk_size = CHUNK
    cfg.runtime.device = "cpu"
    cfg.store = None
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def run_env(prefect_harness, repint_cache, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    tmp = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "REPINT_CACHE": str(repint_cache),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect-storage"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return {"tmp": tmp, "env": env, "config": _config(tmp / "config.yaml")}


def _start(run_env: dict, out: Path, name: str) -> subprocess.Popen:
    log = open(run_env["tmp"] / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "repint.app.cli", "run", str(run_env["config"]), "--out", str(out)],
                            stdout=log, stderr=subprocess.STDOUT, env=run_env["env"], start_new_session=True)
    log.close()
    return proc


def _log(run_env: dict, name: str) -> str:
    return (run_env["tmp"] / f"{name}.log").read_text(errors="replace")


def _finish(run_env: dict, proc: subprocess.Popen, name: str, timeout: float = 900) -> str:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        raise
    log = _log(run_env, name)
    assert rc == 0, log[-5000:]
    return log


def _done(store: Path, stage: str) -> set[int]:
    folder = store / "_done" / stage / "c"
    try:
        return {int(p) for p in os.listdir(folder) if p.isdigit()}  # not zarr's `<chunk>.<uuid>.partial` of a write
    except FileNotFoundError:
        return set()


def _kill_midway(run_env: dict, proc: subprocess.Popen, store: Path, stage: str, name: str,
                 timeout: float = 600) -> set[int]:
    """SIGKILL the run's process group once some but not all units of ``stage`` are done; the units
    done at that moment (read again after the kill: a unit may have finished in between)."""
    deadline = time.monotonic() + timeout
    while True:
        done = _done(store, stage)
        if 0 < len(done) < N_CHUNKS:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            break
        assert proc.poll() is None, f"the run ended before it could be killed in {stage}\n" + _log(run_env, name)
        assert len(done) < N_CHUNKS, f"{stage} finished before the poll saw it half done"
        assert time.monotonic() < deadline, _log(run_env, name)
        time.sleep(0.01)
    time.sleep(1)  # let the killed process group's remains vanish
    after = _done(store, stage)
    assert 0 < len(after) < N_CHUNKS, after
    return after


def _arrays(store: FeatureStore) -> dict[str, np.ndarray]:
    import zarr

    return {path: np.asarray(node[...]) for path, node in store.root.members(max_depth=None)
            if isinstance(node, zarr.Array)}


def _comparable_attrs(store: FeatureStore) -> dict:
    attrs = store.attrs
    attrs.pop("store_id")
    attrs["stages"] = {k: {f: v for f, v in info.items() if f != "epoch"} for k, info in attrs["stages"].items()}
    return attrs


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = FeatureStore(str(a), mode="r"), FeatureStore(str(b), mode="r")
    xa, xb = _arrays(sa), _arrays(sb)
    assert sorted(xa) == sorted(xb)
    for group in ("reference/features", "reference/logits", "reference/predictions", "reference/ids",
                  "unseen/features", "signs/reference", "signs/unseen", "boundaries/W", "polytopes/covered",
                  "evaluation/RI/y_masked", "evaluation/Grad-CAM/y_masked", "interpretations/RI/c0/"):
        assert any(p.startswith(group) for p in xa), group
    for path, value in xa.items():
        assert xb[path].dtype == value.dtype and xb[path].shape == value.shape, path
        np.testing.assert_array_equal(xb[path], value, err_msg=path)
    assert _comparable_attrs(sa) == _comparable_attrs(sb)
    assert all(info["complete"] for info in sb.attrs["stages"].values())
    ra, rb = (json.loads((p.parent / "summary.json").read_text()) for p in (a, b))
    for key in ("methods", "polytopes", "n_boundaries", "n_distinct_boundaries", "n_reference", "n_unseen"):
        assert ra[key] == rb[key], key


def _task_runs_since(prefix: str, since: float) -> list[str]:
    """Names of the Prefect task runs called ``prefix*`` that started after ``since`` (epoch s)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    runs: list = []
    with get_client(sync_client=True) as client:
        while True:  # the server answers at most 200 at a time
            page = client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_=prefix),
                start_time=TaskRunFilterStartTime(after_=datetime.fromtimestamp(since, UTC))),
                limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    return sorted(r.name for r in runs if r.name.startswith(prefix))


def _chunk_mtimes(store: Path, array: str, units: set[int]) -> dict[int, int]:
    out = {}
    for u in units:
        files = [p for p in (store / array / "c" / str(u)).rglob("*") if p.is_file()]
        assert files, (array, u)
        out[u] = max(p.stat().st_mtime_ns for p in files)
    return out


@pytest.fixture(scope="module")
def baseline(run_env):
    """An uninterrupted run; while it runs, a second `repint run` on the same output is refused."""
    out = run_env["tmp"] / "baseline"
    proc = _start(run_env, out, "baseline")
    lock = out / "store.zarr" / "_lock" / "zarr.json"
    deadline = time.monotonic() + 600
    while not lock.exists():
        assert proc.poll() is None, _log(run_env, "baseline")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder = json.loads(lock.read_text())["attributes"]["repint_lock"]
    second = _start(run_env, out, "second")
    rc = second.wait(600)
    running = proc.poll() is None
    _finish(run_env, proc, "baseline")
    assert not lock.exists() and not lock.parent.exists()  # released at the end
    return {"out": out, "store": out / "store.zarr", "second": (rc, _log(run_env, "second"), running),
            "holder": holder}


def test_a_second_run_on_the_same_store_is_refused(baseline):
    rc, log, holder_still_running = baseline["second"]
    assert holder_still_running  # refused while the first run was writing, not after it
    assert rc == 2, log[-3000:]
    store, h = baseline["store"], baseline["holder"]
    line = f"repint run: error: The store {store} is being written by another run: host {h['host']}, pid {h['pid']}, " \
           f"started {h['started']}"
    assert line in log, log[-3000:]
    assert "Wait for that run to finish, or write to another store" in log
    assert verify_store(str(store)).ok  # the refused run wrote nothing


def test_sigkill_during_ingest_resumes_from_completed_chunks(run_env, baseline):
    out = run_env["tmp"] / "killed-in-ingest"
    store = out / "store.zarr"
    proc = _start(run_env, out, "ingest-killed")
    done = _kill_midway(run_env, proc, store, "ingest-reference", "ingest-killed")
    assert (store / "_lock" / "zarr.json").exists()  # the dead run's lock is left behind
    # what the dead run left: an incomplete stage nobody trusts, reported as such
    report = verify_store(str(store))
    assert report.ok, report.text()
    assert report.stages["ingest-reference"] == f"incomplete ({len(done)}/{N_CHUNKS} units done)"
    with pytest.raises(StoreError, match="'ingest-reference', which is not complete"):
        FeatureStore(str(store), mode="r").read("reference/features")
    before = _chunk_mtimes(store, "reference/features", done)

    t0 = time.time()
    log = _finish(run_env, _start(run_env, out, "ingest-resumed"), "ingest-resumed")
    assert "Took over the stale lock of the store" in log and "is gone" in log
    redone = _task_runs_since("ingest-reference-", t0)
    assert redone == sorted(f"ingest-reference-{c}" for c in set(range(N_CHUNKS)) - done), (done, redone)
    assert len(_task_runs_since("ingest-unseen-", t0)) == N_CHUNKS
    assert _chunk_mtimes(store, "reference/features", done) == before  # completed chunks were not written again
    _assert_same_store(baseline["store"], store)
    assert verify_store(str(store)).ok
    print(f"ingest: killed with {len(done)}/{N_CHUNKS} chunks done, {len(redone)} redone")


def test_sigkill_during_sign_chunks_resumes_from_completed_chunks(run_env, baseline):
    out = run_env["tmp"] / "killed-in-signs"
    store = out / "store.zarr"
    proc = _start(run_env, out, "signs-killed")
    done = _kill_midway(run_env, proc, store, "signs-reference", "signs-killed")
    report = verify_store(str(store))
    assert report.ok, report.text()
    assert report.stages["ingest-reference"] == report.stages["boundaries"] == "complete"
    assert report.stages["signs-reference"] == f"incomplete ({len(done)}/{N_CHUNKS} units done)"
    before = _chunk_mtimes(store, "signs/reference", done)
    features_before = _chunk_mtimes(store, "reference/features", set(range(N_CHUNKS)))

    t0 = time.time()
    log = _finish(run_env, _start(run_env, out, "signs-resumed"), "signs-resumed")
    assert "Took over the stale lock of the store" in log
    redone = _task_runs_since("signs-reference-", t0)
    assert redone == sorted(f"signs-reference-{c}" for c in set(range(N_CHUNKS)) - done), (done, redone)
    # ingest was complete: none of its chunks ran again (the subflow itself shows up as "ingest-0")
    assert _task_runs_since("ingest-reference-", t0) == _task_runs_since("ingest-unseen-", t0) == []
    assert _chunk_mtimes(store, "signs/reference", done) == before
    assert _chunk_mtimes(store, "reference/features", set(range(N_CHUNKS))) == features_before
    _assert_same_store(baseline["store"], store)
    assert verify_store(str(store)).ok
    print(f"signs: killed with {len(done)}/{N_CHUNKS} chunks done, {len(redone)} redone")


# a Dask worker dies in the middle of a sign task ------------------------------------------------------

def test_a_dask_worker_killed_during_a_sign_task(prefect_harness, repint_cache, tmp_path):
    """Two workers; once the first sign chunk is done, the worker running another sign task is
    killed (SIGKILL). The scheduler gives its task to the other worker; every chunk is done once in
    the end and the sign bits equal recomputation."""
    from repint.flows.runners import task_runner
    from repint.flows.spec import build_spec
    from repint.flows.stages import boundaries_flow, centres_flow, ingest_flow

    cfg = tiny_config(160, 1, 20, runner="dask")
    cfg.runtime.chunk_size = 4  # 40 sign tasks per split
    with dask_cluster(tmp_path, ("victim", "survivor")) as cluster:
        cfg.runtime.dask_address = cluster.address
        spec = with_model(build_spec(cfg, tmp_path / "out"))
        ingest_flow(spec)
        centres_flow(spec)
        store = Path(spec.store)
        killed: dict = {}

        def kill_when_first_chunk_is_done() -> None:
            with cluster.client() as client:
                names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    # as soon as the victim runs a sign task (waiting for a first finished chunk
                    # too lost the race on a loaded machine: the survivor could finish them all)
                    for address, keys in client.processing().items():
                        signs = [k for k in keys if "sign_chunk" in str(k)]
                        if names.get(address) == "victim" and signs:
                            cluster.workers["victim"].send_signal(signal.SIGKILL)
                            killed.update(address=address, keys=signs, at=len(_done(store, "signs-reference")))
                            return
                    time.sleep(0.01)

        with cluster.client() as client:
            client.get_task_stream()  # the scheduler's task-stream plugin, before the run
            t0 = time.time()
            watcher = threading.Thread(target=kill_when_first_chunk_is_done, daemon=True)
            watcher.start()
            state = boundaries_flow.with_options(task_runner=task_runner(spec))(spec, return_state=True)
            watcher.join(60)
            stream = client.get_task_stream(start=t0)
            assert killed, "the victim never ran a sign task"
            assert cluster.workers["victim"].wait(30) == -signal.SIGKILL
            survivors = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            wait_workers(client, 1)
        assert killed, "the victim never ran a sign task"
        assert state.is_completed(), state
    assert list(survivors.values()) == ["survivor"]
    # the killed worker's sign tasks were run again, on the survivor
    finished = {t["key"]: t["worker"] for t in stream if "sign_chunk" in str(t["key"])}
    for key in killed["keys"]:
        assert finished.get(key) in survivors, (key, finished.get(key))
    s = FeatureStore(spec.store, mode="r")
    w, b = s.read("boundaries/W"), s.read("boundaries/b")
    for split in ("reference", "unseen"):
        assert s.pending_units(f"signs-{split}") == []
        np.testing.assert_array_equal(s.read(f"signs/{split}"), sign_bits(s.read(f"{split}/features"), w, b))
    assert verify_store(spec.store, sample=160).ok
    runs = _task_runs_since("signs-", t0)
    assert sorted(set(runs)) == sorted(f"signs-{sp}-{c}" for sp in ("reference", "unseen") for c in range(40))
    print(f"worker killed with {killed['at']} chunks done while it ran {killed['keys']}; "
          f"{len(runs)} sign task runs for 80 chunks")
