"""What a command shows in the terminal, what goes to its log file, and how Ctrl-C stops it.

* **The run log** (:func:`log_to_file`): Prefect's logging is configured, in this process and in
  every worker process it starts (``PREFECT_LOGGING_SETTINGS_PATH`` is inherited), to write every
  record with its full traceback to ``OUT/repint.log``; the terminal shows warnings without
  tracebacks and none of the engine's per-task failure records (a failed task is reported once, by
  the command, as one line naming the log).
* **Stops** (:class:`StopOnSignal`): SIGINT (Ctrl-C, sent to the whole process group) and SIGTERM
  (``timeout``, schedulers, ``kill``) print one line saying how to resume, release the store locks
  this process holds, end the processes it started (the temporary Prefect server, Dask workers) and
  exit at once with 130 / 143. Every unit the pipeline finished is already in the store with its
  completion record and the unit in flight has none, so the same command resumes. A second signal
  exits without the clean-up.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

__all__ = ["LOG_NAME", "ConsoleFilter", "RunLogHandler", "StopOnSignal", "console_formatter", "log_to_file",
           "write_traceback"]

LOG_NAME = "repint.log"
#: the Prefect engine's loggers whose ERROR records repeat the failure the command reports in one line
_ENGINE = ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine")


class ConsoleFilter(logging.Filter):
    """The terminal's share of the log: none of the engine's records of a failure (with a traceback, or
    the final state), which the command reports once; other errors (a lost lock, ...) are shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith(_ENGINE):
            return True
        return not (record.exc_info or str(record.msg).startswith(("Finished in state", "Task run failed",
                                                                     "Flow run failed")))


def console_formatter(**kwargs: Any) -> logging.Formatter:
    """Prefect's standard formatter without tracebacks (they are in the log file). The record is left
    as it was, so that the file's handler still formats its traceback."""
    from prefect.logging.formatters import PrefectFormatter

    class _NoTraceback(PrefectFormatter):
        def format(self, record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info = record.exc_text = record.stack_info = None
            try:
                return super().format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    return _NoTraceback(**kwargs)


class RunLogHandler(logging.FileHandler):
    """A file handler that creates its folder at its first record (the output folder may not exist yet
    when logging is configured)."""

    def __init__(self, filename: str, **kwargs: Any) -> None:
        super().__init__(filename, mode="a", encoding="utf-8", delay=True, **kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:  # first record: a log that cannot be opened is not the caller's failure
            try:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
                self.stream = self._open()
            except OSError:
                return
        super().emit(record)


def log_to_file(path: Path) -> Path:
    """Configure Prefect's logging (before Prefect is imported) to write everything to ``path`` and
    the terminal to show :class:`ConsoleFilter`'s share. Returns ``path``."""
    import importlib.util

    if "prefect" in sys.modules or os.environ.get("PREFECT_LOGGING_SETTINGS_PATH") \
            or os.environ.get("PREFECT_LOGGING_CONFIG_PATH"):
        return path  # configured already (a test harness, or a user's own logging.yml): leave it
    spec = importlib.util.find_spec("prefect")  # located, not imported: Prefect reads its settings on import
    if spec is None or not spec.submodule_search_locations:
        return path
    default = Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"
    base = yaml.safe_load(default.read_text())
    base.setdefault("filters", {})["repint_console"] = {"()": f"{__name__}.ConsoleFilter"}
    base["formatters"]["repint_console"] = {**base["formatters"]["standard"], "()": f"{__name__}.console_formatter"}
    base["handlers"]["console"].update(filters=["repint_console"], formatter="repint_console")
    base["handlers"]["repint_file"] = {"()": f"{__name__}.RunLogHandler", "filename": str(path.resolve()),
                                       "formatter": "standard", "level": 0}
    base["root"]["handlers"] = [*base["root"]["handlers"], "repint_file"]
    for name in ("prefect._internal",):  # loggers that do not propagate to the root
        base["loggers"][name]["handlers"] = [*base["loggers"][name]["handlers"], "repint_file"]
    fd, settings = tempfile.mkstemp(prefix="repint-logging-", suffix=".yml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(base, f)
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = settings
    _TEMPORARY.append(Path(settings))
    atexit.register(_remove_temporary)
    return path


_TEMPORARY: list[Path] = []  # files to remove at exit (also when a signal ends the process)


def _remove_temporary() -> None:
    for path in _TEMPORARY:
        path.unlink(missing_ok=True)


def write_traceback(path: Path, exc: BaseException) -> None:
    """Append ``exc``'s traceback to the run log."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} | ERROR   | repint - the command failed:\n")
            f.write("".join(traceback.format_exception(exc)))


class StopOnSignal:
    """While active, SIGINT and SIGTERM stop the command within seconds (see the module docstring).
    ``resume`` is the command line that resumes; ``log`` the run log, named in the line."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, command: str, resume: list[str] | None = None, grace: float = 3.0) -> None:
        self.command, self.grace = command, grace
        self.resume = shlex.join(["repint", *(resume if resume is not None else sys.argv[1:])])
        self._old: dict[int, Any] = {}
        self._stopping = False

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        # while a flow runs, Prefect swaps in its own SIGTERM handler, which raises TerminationSignal in
        # whatever the main thread does (a serializer may wrap it) and stops nothing for seconds: it is
        # pointed at this one for as long as the command runs (tests/test_stops.py runs it for real)
        with contextlib.suppress(ImportError, AttributeError):
            import prefect.utilities.engine as engine

            self._prefect_handler = engine._prefect_sigterm_handler
            engine._prefect_sigterm_handler = self._handle
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if getattr(self, "_prefect_handler", None) is not None:
            import prefect.utilities.engine as engine

            engine._prefect_sigterm_handler = self._prefect_handler

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        code = 128 + signum
        if self._stopping:  # a second Ctrl-C: no more waiting
            os._exit(code)
        self._stopping = True
        name = signal.Signals(signum).name
        line = (f"repint {self.command}: stopped by {name}; nothing was written: run `{self.resume}` again"
                if self.command == "train" else f"repint {self.command}: stopped by {name}; every finished chunk "
                f"is kept in the store: resume with `{self.resume}`")
        with contextlib.suppress(Exception):  # os.write: print could meet a write of the main thread's
            os.write(2, (line + "\n").encode())
        _end_children(self.grace)  # first, so that no worker writes the store after its lock is gone
        with contextlib.suppress(Exception):
            from repint.storage.lock import release_held

            release_held()
        _remove_temporary()
        os._exit(code)


def _end_children(grace: float) -> None:
    """SIGTERM to every process this one started, SIGKILL to those still there after ``grace`` s."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - distributed depends on it
        return
    with contextlib.suppress(Exception):
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=grace)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()


def run_log(command: str, out: str | None, config: str | None) -> Path | None:
    """Where a command that runs the pipeline logs: ``OUT/repint.log`` (``train``: beside the checkpoint
    given by ``--out``, else beside the config); ``None`` for the others."""
    if command in ("run", "demo", "reinterpret") and out:
        return Path(out) / LOG_NAME
    if command == "train":
        return (Path(out).parent if out else Path(config or ".").resolve().parent) / LOG_NAME
    return None


def stops(command: str, argv: list[str] | None) -> contextlib.AbstractContextManager[Any]:
    """:class:`StopOnSignal` for a pipeline command run in the main thread; nothing otherwise."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return StopOnSignal(command, resume=list(argv) if argv is not None else None)


def see_log(log: Path | None) -> str:
    """`` (full log: PATH)`` when the run wrote its log, else ``""``."""
    return f" (full log: {log})" if log is not None and log.exists() else ""
