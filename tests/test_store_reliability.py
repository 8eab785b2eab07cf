"""Store integrity without a model: the write lock between real processes (refused, stale after a
crash, kept fresh by its heartbeat), readers that refuse incomplete stages, retries of transient
errors, and `repint verify` on a store whose chunks are corrupted on purpose."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repint.app.cli import main
from repint.signs import sign_bits
from repint.storage import (
    FeatureStore,
    RetryPolicy,
    StoreError,
    StoreLock,
    StoreLockedError,
    is_transient,
    retrying,
)
from repint.storage.verify import verify_store

N, CHUNK, M = 40, 8, 13


def make_store(path: Path | str, storage_options: dict | None = None) -> FeatureStore:
    """A small store with the layout of ingest-reference, boundaries and signs-reference, written
    through the same calls the tasks use (one unit per chunk, data before completion record)."""
    rng = np.random.default_rng(0)
    store = FeatureStore(str(path), storage_options)
    store.set_attrs(model={"architecture": "vgg-small", "checkpoint_sha256": "0" * 64},
                    data_fingerprint_reference="f" * 16)
    n_chunks = -(-N // CHUNK)
    store.begin_stage("ingest-reference", "a" * 16, n_chunks, arrays=["reference/features"])
    store.require("reference/features", (N, 2, 3, 3), "f4", (CHUNK, 2, 3, 3))
    store.require("reference/logits", (N, 3), "f4", (CHUNK, 3))
    store.require("reference/predictions", (N,), "i8", (CHUNK,), fill_value=-1)
    store.write("reference/ids", np.asarray([f"img-{i}" for i in range(N)], dtype=str))
    store.write("reference/labels", np.zeros(N, np.int64))
    feats = rng.normal(size=(N, 2, 3, 3)).astype(np.float32)
    logits = rng.normal(size=(N, 3)).astype(np.float32)
    for c in range(n_chunks):
        lo, hi = c * CHUNK, min(N, (c + 1) * CHUNK)
        store.write_region("reference/features", slice(lo, hi), feats[lo:hi])
        store.write_region("reference/logits", slice(lo, hi), logits[lo:hi])
        store.write_region("reference/predictions", slice(lo, hi), logits[lo:hi].argmax(1))
        store.mark_unit_done("ingest-reference", c)
    store.finish_stage("ingest-reference")
    store.begin_stage("boundaries", "b" * 16, 1)
    w, b = rng.normal(size=(M, 18)).astype(np.float32), rng.normal(size=M)
    store.write("boundaries/W", w)
    store.write("boundaries/b", b)
    for name in ("top2", "source", "owner"):
        store.write(f"boundaries/{name}", np.zeros((M, 2) if name == "top2" else M, np.int64))
    store.mark_unit_done("boundaries", 0)
    store.finish_stage("boundaries")
    store.begin_stage("signs-reference", "c" * 16, n_chunks, arrays=["signs/reference"])
    store.require("signs/reference", (N, 2), "u1", (CHUNK, 2), fill_value=0)
    for c in range(n_chunks):
        lo, hi = c * CHUNK, min(N, (c + 1) * CHUNK)
        store.write_region("signs/reference", slice(lo, hi), sign_bits(feats[lo:hi], w, b))
        store.mark_unit_done("signs-reference", c)
    store.finish_stage("signs-reference")
    return store


# verify -----------------------------------------------------------------------------------------
def test_verify_passes_a_sound_store(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    report = verify_store(str(tmp_path / "s.zarr"), sample=N)
    assert report.ok, report.text()
    assert report.stages == {s: "complete" for s in ("ingest-reference", "boundaries", "signs-reference")}
    # every chunk of every array of the three stages (features 5, logits 5, predictions 5, ids 1, labels 1,
    # W b top2 source owner 5, signs 5) and of their completion records (5 + 1 + 5)
    assert report.chunks_checked == 5 * 3 + 2 + 5 + 5 + 11
    assert report.rows_recomputed == N
    assert main(["verify", str(tmp_path / "s.zarr")]) == 0
    assert "OK: 0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "absent.zarr")]) == 2
    assert "repint verify: error: No RepInt store" in capsys.readouterr().err


def test_verify_names_each_corrupted_chunk(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    store = make_store(path)
    chunk = path / "reference" / "features" / "c"
    (chunk / "1" / "0" / "0" / "0").write_bytes(b"this is no zstd frame" * 10)  # garbage
    (chunk / "3" / "0" / "0" / "0").unlink()  # deleted
    sign_chunk = path / "signs" / "reference" / "c" / "2" / "0"
    sign_chunk.write_bytes(sign_chunk.read_bytes()[:-5])  # truncated
    # valid chunks, wrong bits: row 33 flipped (chunk 4), found by recomputing the sample
    store.root["signs/reference"][33] = ~np.asarray(store.root["signs/reference"][33])
    (path / "_done" / "boundaries" / "c" / "0").unlink()  # a complete stage without its completion record

    report = verify_store(str(path), sample=N)
    assert not report.ok
    found = {(f.path, f.chunk): f.message for f in report.errors}
    assert "does not decode" in found[("reference/features", (1, 0, 0, 0))]
    assert "missing" in found[("reference/features", (3, 0, 0, 0))]
    assert "does not decode" in found[("signs/reference", (2, 0))]
    assert "recomputed" in found[("signs/reference", None)] and "[33]" in found[("signs/reference", None)]
    assert "missing" in found[("_done/boundaries", (0,))]
    assert "units [0] have no completion record" in found[("_done/boundaries", None)]
    assert len(report.errors) == 6, report.text()

    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "ERROR   reference/features chunk 1.0.0.0: chunk does not decode" in out
    assert "ERROR   reference/features chunk 3.0.0.0: chunk object is missing" in out
    assert "ERROR   signs/reference chunk 2.0: chunk does not decode" in out
    assert "PROBLEMS: 6 error(s)" in out
    assert main(["verify", str(path), "--json"]) == 1
    assert {(f["path"], tuple(f["chunk"] or ())) for f in json.loads(capsys.readouterr().out)["findings"]} >= {
        ("reference/features", (1, 0, 0, 0)), ("reference/features", (3, 0, 0, 0)), ("signs/reference", (2, 0))}


def test_verify_reports_shapes_and_incomplete_stages(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    store.write("reference/labels", np.zeros(N - 1, np.int64))  # one label short
    store.begin_stage("signs-unseen", "d" * 16, 3, arrays=["signs/unseen"])
    store.mark_unit_done("signs-unseen", 1)
    report = verify_store(str(tmp_path / "s.zarr"))
    assert [(f.path, f.message) for f in report.errors] == [
        ("reference/labels", f"shape [{N - 1}] does not match the other arrays (expected [{N}])")]
    assert report.stages["signs-unseen"] == "incomplete (1/3 units done)"
    assert any("'signs-unseen' is not complete" in f.message for f in report.findings if f.level == "warning")


# readers --------------------------------------------------------------------------------------------
def test_readers_refuse_incomplete_stages(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    store.begin_stage("signs-reference", "e" * 16, 5, arrays=["signs/reference"])  # new inputs: reset
    store.require("signs/reference", (N, 2), "u1", (CHUNK, 2), fill_value=0)
    store.mark_unit_done("signs-reference", 0)
    reader = FeatureStore(str(tmp_path / "s.zarr"), mode="r")
    assert reader.read("reference/features").shape == (N, 2, 3, 3)  # complete: readable
    with pytest.raises(StoreError, match=r"'signs/reference' belongs to the stage 'signs-reference', which is not "
                                         r"complete \(1/5 units done\): the run that wrote it stopped"):
        reader.read("signs/reference")
    assert reader.read("signs/reference", allow_incomplete=True).shape == (N, 2)
    assert reader.incomplete_stages() == {"signs-reference": "1/5 units done"}
    with StoreLock(str(tmp_path / "s.zarr")):
        with pytest.raises(StoreError, match=f"a run is writing it now \\(host .*, pid {os.getpid()}, started"):
            FeatureStore(str(tmp_path / "s.zarr"), mode="r").read("signs/reference")
        assert verify_store(str(tmp_path / "s.zarr")).writer["pid"] == os.getpid()
    store.write("x", np.arange(3))  # the writer (mode "a") reads what it writes
    assert store.read("signs/reference").shape == (N, 2)


# the lock -------------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from repint.storage import StoreLock
lock = StoreLock(sys.argv[1], heartbeat=float(sys.argv[2])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _holder(store: Path, heartbeat: float = 15) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(heartbeat)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def _contend(store: Path, stale_after: float = 120) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom repint.storage import StoreLock, StoreLockedError\n"
            f"try:\n    lock = StoreLock({str(store)!r}, stale_after={stale_after}).acquire()\n"
            "except StoreLockedError as e:\n    print(e); sys.exit(3)\n"
            "print('took over' if lock.took_over else 'free', lock.took_over and lock.took_over['reason'])\n"
            "lock.release()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    store = tmp_path / "s.zarr"
    FeatureStore(str(store))
    holder = _holder(store)
    try:
        refused = _contend(store)
        assert refused.returncode == 3, refused.stderr
        msg = refused.stdout
        assert f"The store {store} is being written by another run: host " in msg
        assert f"pid {holder.pid}, started 20" in msg and "last heartbeat" in msg
        assert "Wait for that run to finish" in msg and f"delete {store}/_lock/zarr.json" in msg
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):  # and in this process, too
            StoreLock(str(store)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    # the holder died without releasing: its lock is still there, and stale (its process is gone)
    assert (store / "_lock" / "zarr.json").exists()
    taken = _contend(store)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert taken.stdout.startswith(f"took over its process {holder.pid} on this host")
    assert "Took over the stale lock of the store" in taken.stderr  # the warning, logged
    assert not (store / "_lock").exists()  # released by the new holder


def test_a_live_holders_heartbeat_keeps_its_lock(tmp_path):
    store = tmp_path / "s.zarr"
    holder = _holder(store, heartbeat=0.3)
    try:
        first = json.loads((store / "_lock" / "zarr.json").read_text())["attributes"]["repint_lock"]
        time.sleep(2.5)
        refused = _contend(store, stale_after=1.5)  # older than 1.5 s without the heartbeat
        assert refused.returncode == 3, refused.stdout + refused.stderr
        now = json.loads((store / "_lock" / "zarr.json").read_text())["attributes"]["repint_lock"]
        assert now["heartbeat_ts"] > first["heartbeat_ts"] + 1 and now["token"] == first["token"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)


def test_a_lock_from_another_host_is_stale_only_by_its_heartbeat(tmp_path):
    store = tmp_path / "s.zarr"
    lock_file = store / "_lock" / "zarr.json"
    lock_file.parent.mkdir(parents=True)

    def plant(age: float) -> None:
        record = {"token": "x" * 32, "host": "other-host", "machine": "elsewhere", "pid": 1, "started": "then",
                  "heartbeat_ts": time.time() - age, "command": "repint run c.yaml"}
        lock_file.write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                         "attributes": {"repint_lock": record}}))

    plant(age=10)
    with pytest.raises(StoreLockedError, match="host other-host, pid 1"):
        StoreLock(str(store), stale_after=60).acquire()
    plant(age=100)
    lock = StoreLock(str(store), stale_after=60).acquire()
    try:
        assert "heartbeat is 100 s old" in lock.took_over["reason"]
        assert lock.holder()["token"] == lock.token
    finally:
        lock.release()
    assert not lock_file.exists()


# retries --------------------------------------------------------------------------------------------
def test_transient_errors_are_retried_and_others_are_not():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "503 Service Unavailable")
        return "ok"

    assert retrying("testing", flaky, RetryPolicy(attempts=4, base=0.01)) == "ok" and len(calls) == 3
    for exc in (FileNotFoundError("x"), PermissionError("x"), ValueError("x"), KeyError("x")):
        assert not is_transient(exc)
    for exc in (ConnectionResetError("x"), TimeoutError("x"), OSError(errno.EBUSY, "SlowDown")):
        assert is_transient(exc)
    calls.clear()

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        retrying("testing", missing, RetryPolicy(attempts=4, base=0.01))
    assert len(calls) == 1
    with pytest.raises(OSError, match="503"):
        retrying("testing", lambda: (_ for _ in ()).throw(OSError(errno.EBUSY, "503")), RetryPolicy(2, 0.01))
