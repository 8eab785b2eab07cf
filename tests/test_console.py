"""The run log's pieces (issue #15, item 11) on hand-made records; the whole path runs in
tests/test_stops.py on a real process."""

from __future__ import annotations

import logging
import sys

import numpy as np

from repint.app.console import ConsoleFilter, RunLogHandler
from repint.data import source_from_spec
from repint.storage.verify_data import check_data


def _record(name: str, level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, None, info)


def test_the_terminal_drops_the_engines_failure_records_only():
    keep = ConsoleFilter().filter
    assert not keep(_record("prefect.task_runs", logging.ERROR, "Task run failed with exception: ...", exc=True))
    assert not keep(_record("prefect.flow_runs", logging.ERROR, "Finished in state Failed('...')"))
    # an error a flow logs itself (the store's lock lost) is the user's business
    assert keep(_record("prefect.flow_runs", logging.ERROR, "the lock of the store was lost during this run"))
    assert keep(_record("prefect.task_runs", logging.WARNING, "3 reference images are skipped", exc=True))
    assert keep(_record("repint.storage", logging.ERROR, "could not refresh the lock", exc=True))


def test_a_log_that_cannot_be_opened_does_not_fail_the_caller(tmp_path):
    (tmp_path / "file").write_text("x")
    handler = RunLogHandler(str(tmp_path / "file" / "repint.log"))  # below a file: never opens
    handler.emit(_record("prefect", logging.WARNING, "still running"))
    good = RunLogHandler(str(tmp_path / "new" / "repint.log"))  # its folder is made at the first record
    good.setFormatter(logging.Formatter("%(message)s"))
    good.emit(_record("prefect", logging.WARNING, "written"))
    good.close()
    assert (tmp_path / "new" / "repint.log").read_text() == "written\n"


def test_an_archive_replaced_on_disk_is_read_again_in_the_same_process(tmp_path):
    """A long-lived Dask worker caches sources by spec; the archive's size and time are in the key."""
    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((2, 3, 8, 8), np.float32), labels=np.array([0, 1]))
    first = source_from_spec({"kind": "arrays", "path": str(path)})
    np.savez(path, images=np.ones((3, 3, 8, 8), np.float32), labels=np.array([0, 1, 1]))
    again = source_from_spec({"kind": "arrays", "path": str(path)})
    assert len(first) == 2 and len(again) == 3 and again.load(np.arange(1)).max() == 1.0


class _Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str, path: str | None = None) -> None:
        self.errors.append(message)

    def warning(self, message: str, path: str | None = None) -> None:
        self.warnings.append(message)


def test_verify_reports_data_that_no_longer_loads_as_an_error_and_missing_data_as_a_warning(tmp_path):
    attrs = {"data_unseen": {"kind": "arrays", "path": str(tmp_path / "gone.npz")},
             "data_contents_unseen": {"chunk": 4, "stats": [""], "hashes": ["0" * 16]}}
    report = _Report()
    check_data(attrs, "unseen", report)
    assert not report.errors and "cannot check the unseen images" in report.warnings[0]
    (tmp_path / "gone.npz").write_text("not an archive any more")
    report = _Report()
    check_data(attrs, "unseen", report)
    assert not report.warnings and "no longer load" in report.errors[0]
