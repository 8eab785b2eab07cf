"""Progress where the output is not a terminal (issue 15, item 12): plain ``[repint]`` lines on stderr per
stage (every ~10%) and per training epoch, so a log shows that a run is alive and how far it is."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from repint.progress import ProgressLine, progress_mode


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _lines(total: int, every: float = 0.1) -> list[str]:
    out, clock = io.StringIO(), _Clock()
    p = ProgressLine(total, "ingest-reference", out, every=every, clock=clock)
    for n in range(1, total + 1):
        clock.t = 2.0 * n
        p.update(n)
    return out.getvalue().splitlines()


def test_lines_for_twelve_units_every_tenth():
    assert _lines(12) == [
        "[repint] ingest-reference: 0/12 units",
        "[repint] ingest-reference: 2/12 units (16%) 4 s",
        "[repint] ingest-reference: 3/12 units (25%) 6 s",
        "[repint] ingest-reference: 4/12 units (33%) 8 s",
        "[repint] ingest-reference: 5/12 units (41%) 10 s",
        "[repint] ingest-reference: 6/12 units (50%) 12 s",
        "[repint] ingest-reference: 8/12 units (66%) 16 s",
        "[repint] ingest-reference: 9/12 units (75%) 18 s",
        "[repint] ingest-reference: 10/12 units (83%) 20 s",
        "[repint] ingest-reference: 11/12 units (91%) 22 s",
        "[repint] ingest-reference: 12/12 units (100%) 24 s",
    ]


def test_one_unit_prints_start_and_end_only():
    assert _lines(1) == ["[repint] ingest-reference: 0/1 units", "[repint] ingest-reference: 1/1 units (100%) 2 s"]


def test_many_units_print_a_bounded_number_of_lines():
    lines = _lines(1000)
    assert len(lines) == 11 and lines[-1].startswith("[repint] ingest-reference: 1000/1000 units (100%)")
    assert len(_lines(1000, every=0.25)) == 5


def test_repeated_or_unordered_counts_do_not_repeat_lines():
    out = io.StringIO()
    p = ProgressLine(4, "x", out, unit="chunks")
    for n in (1, 1, 2, 1, 4, 4):
        p.update(n)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "[repint] x: 0/4 chunks", "[repint] x: 1/4 chunks", "[repint] x: 2/4 chunks", "[repint] x: 4/4 chunks"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_terminal_unless_forced(monkeypatch):
    monkeypatch.delenv("REPINT_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines" and progress_mode(_Tty()) == "bar"
    for forced in ("off", "lines", "bar"):
        monkeypatch.setenv("REPINT_PROGRESS", forced.upper())
        assert progress_mode(io.StringIO()) == forced and progress_mode(_Tty()) == forced
    monkeypatch.setenv("REPINT_PROGRESS", "auto")
    assert progress_mode(io.StringIO()) == "lines"


def _train_yaml(tmp_path) -> str:  # noqa: ANN001
    cfg = tmp_path / "train.yaml"
    cfg.write_text("name: t\ndata: {kind: digits, limit: 100}\ntrain: {epochs: 5, batch_size: 16}\n")
    return str(cfg)


def test_train_to_a_file_prints_a_line_per_epoch_before_the_json(tmp_path):
    """A real `repint train` with its output in a file (not a terminal): a line per epoch, then the JSON."""
    env = {k: v for k, v in os.environ.items() if k not in ("REPINT_PROGRESS", "PREFECT_API_URL")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               REPINT_CACHE=str(tmp_path / "cache"))
    log = tmp_path / "train.log"
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "repint.app.cli", "train", _train_yaml(tmp_path),
                             "--out", str(tmp_path / "m.pt"), "--epochs", "2", "--no-event"],
                            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            timeout=600).returncode
    text = log.read_text()
    assert rc == 0, text
    epochs = [(m.start(), int(m.group(1))) for m in
              re.finditer(r"^\[repint\] train: epoch (\d+)/2, train accuracy [01]\.\d{3}, \d+ s$", text, re.M)]
    assert [e for _, e in epochs] == [1, 2], text
    brace = text.index("{")
    assert epochs[-1][0] < brace and json.loads(text[brace:])["checkpoint"] == str(tmp_path / "m.pt")


def test_train_progress_off_is_silent(tmp_path, monkeypatch, capsys):
    from repint.config import TrainConfig
    from repint.data import DigitsSource
    from repint.tasks.train import train_model

    monkeypatch.setenv("REPINT_PROGRESS", "off")
    train_model.fn(DigitsSource(limit=40).spec(), None, "vgg-small", 32, (0.5,) * 3, (0.25,) * 3,
                   TrainConfig(epochs=1, batch_size=16), checkpoint=str(tmp_path / "m.pt"))
    assert "[repint]" not in capsys.readouterr().err


@pytest.mark.slow
def test_track_writes_lines_on_the_thread_runner(prefect_harness, monkeypatch, capsys):
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from repint.flows.progress import track

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def doubles() -> list[int]:
        return track([double.submit(i) for i in range(5)], "Test Stage", "test stage", unit="chunks")

    monkeypatch.setenv("REPINT_PROGRESS", "lines")
    assert sorted(doubles()) == [0, 2, 4, 6, 8]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[repint]")]
    assert lines[0] == "[repint] test-stage: 0/5 chunks" and len(lines) == 6
    assert re.fullmatch(r"\[repint\] test-stage: 5/5 chunks \(100%\) \d+ s", lines[-1])
    monkeypatch.setenv("REPINT_PROGRESS", "off")
    doubles()
    assert "[repint]" not in capsys.readouterr().err
