"""Ctrl-C and SIGTERM stop `repint run` (issue #15, item 6), tested on real processes: the command in a
session of its own, as a terminal's foreground job; SIGINT to the whole process group (what Ctrl-C
does) and SIGTERM to the command alone (what `timeout` and schedulers do). Each must end every process
within seconds, print one line saying how to resume, release the store's lock, and leave a store the
same command resumes without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, runner: str) -> Path:
    cfg = {"data": {"kind": "digits", "limit": 400},
           "interpretation": {"q": 20, "interpretations_per_class": 1},
           "evaluation": {"methods": ["RI"], "case_studies": 0, "metrics": []},
           "runtime": {"task_runner": runner, "chunk_size": 8, "n_workers": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(tmp_path: Path, repint_cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "REPINT_CACHE": str(repint_cache)}


def _start(args: list[str], tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "repint.app.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=err, env=env, start_new_session=True)
    return proc, log


def _wait_for_stages(proc: subprocess.Popen, store: Path, timeout: float = 240) -> None:
    """Until ingest has written a chunk (a run well into its stages)."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        done = store / "_done" / "ingest-reference"
        if done.exists() and any(p.name.startswith("c") or p.name.isdigit() for p in done.rglob("*")):
            return
        time.sleep(0.5)
    pytest.fail("the run did not reach ingest in time")


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _stop_and_check(proc: subprocess.Popen, log: Path, sig: int, whole_group: bool) -> float:
    pgid = proc.pid
    assert len(_group(pgid)) >= 2, "the run should have started helper processes (server, workers)"
    t0 = time.time()
    if whole_group:
        os.killpg(pgid, sig)
    else:
        proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
    took = time.time() - t0
    assert rc == 128 + sig, log.read_text()[-3000:]
    deadline = time.time() + 10
    while _group(pgid) and time.time() < deadline:
        time.sleep(0.2)
    left = _group(pgid)
    for p in left:
        p.kill()
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"
    return took


def _resume_line(log: Path) -> str:
    lines = [ln for ln in log.read_text().splitlines() if "resume with" in ln]
    assert len(lines) == 1, log.read_text()[-3000:]
    return lines[0]


@pytest.mark.parametrize("runner, sig, whole_group", [
    ("dask", signal.SIGINT, True),  # Ctrl-C in a terminal
    ("dask", signal.SIGTERM, False),  # timeout(1), a scheduler's stop (Prefect swaps in its SIGTERM handler)
    ("threads", signal.SIGTERM, False),
])
def test_signal_stops_the_run_and_the_same_command_resumes(tmp_path, repint_cache, runner, sig, whole_group):
    cfg, out = _config(tmp_path, runner), tmp_path / "out"
    args = ["run", str(cfg), "--out", str(out)]
    env = _env(tmp_path, repint_cache)
    proc, log = _start(args, tmp_path, env)
    _wait_for_stages(proc, out / "store.zarr")
    took = _stop_and_check(proc, log, sig, whole_group)
    assert took < 20, f"stopping took {took:.0f} s"
    line = _resume_line(log)
    assert line.startswith(f"repint run: stopped by {signal.Signals(sig).name}")
    assert f"resume with `repint run {cfg} --out {out}`" in line
    assert not (out / "store.zarr" / "_lock").exists(), "the lock must be released"
    attrs = json.loads((out / "store.zarr" / "zarr.json").read_text())["attributes"]
    epoch = attrs["stages"]["ingest-reference"]["epoch"]

    done = subprocess.run([sys.executable, "-m", "repint.app.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Took over the stale lock" not in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_reference"] > 0 and "RI" in json.dumps(summary)
    attrs = json.loads((out / "store.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["stages"]["ingest-reference"]["epoch"] == epoch  # resumed, not started again
    assert attrs["stages"]["ingest-reference"]["complete"]


def test_a_failing_task_is_one_line_in_the_terminal_and_a_traceback_in_the_log(tmp_path, repint_cache):
    """Item 11: before, a task that failed printed Prefect's per-task tracebacks (about 300 lines, with
    retries) before the one useful line."""
    import torch

    from repint.nets import VGGNet

    torch.manual_seed(0)
    state = VGGNet(num_classes=10, image_size=32).state_dict()
    state["features.17.weight"].fill_(float("nan"))  # ψ = ReLU(NaN): the ingest chunks fail
    torch.save(state, tmp_path / "nan.pt")
    cfg = yaml.safe_load(_config(tmp_path, "threads").read_text())
    cfg["data"]["limit"] = 60
    cfg["runtime"]["chunk_size"] = 32
    cfg["model"] = {"checkpoint": str(tmp_path / "nan.pt")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "repint.app.cli", "run", str(tmp_path / "c.yaml"), "--out",
                           str(out)], env=_env(tmp_path, repint_cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("[repint]")]  # progress lines
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("repint run: error: NaN or inf in ψ at layer 'features.19'")
    assert lines[0].endswith(f"(full log: {out / 'repint.log'})")
    log = (out / "repint.log").read_text()
    assert "Traceback (most recent call last)" in log and "tasks/ingest.py" in log and "NaN or inf in ψ" in log
