"""Plain progress lines on stderr, for logs that are not a terminal (a scheduler, CI, ``nohup``).

``REPINT_PROGRESS`` chooses how progress shows: ``auto`` (the default) draws a progress bar when stderr
is a terminal and writes plain lines otherwise; ``lines`` always writes lines, ``bar`` always draws the
bar, ``off`` shows neither (Prefect's progress artifacts are kept). A line looks like
``[repint] ingest-reference: 6/12 units (50%) 14 s`` and is flushed as it is written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Literal, TextIO, cast

__all__ = ["ProgressLine", "emit", "progress_mode"]

Mode = Literal["off", "lines", "bar"]


def progress_mode(stream: TextIO | None = None) -> Mode:
    """``REPINT_PROGRESS`` if it is ``off``, ``lines`` or ``bar``; otherwise ``bar`` on a terminal, else ``lines``."""
    mode = os.environ.get("REPINT_PROGRESS", "auto").strip().lower()
    if mode in ("off", "lines", "bar"):
        return cast(Mode, mode)
    try:
        tty = (stream or sys.stderr).isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty else "lines"


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write ``[repint] text`` as one flushed line (to stderr by default)."""
    out = stream or sys.stderr
    out.write(f"[repint] {text}\n")
    out.flush()


class ProgressLine:
    """Lines for ``total`` units of ``label``: one at the start, then one each time the share done
    passes another ``every`` (10%) and one at the end, each with the seconds since the start."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every: float = 0.1,
                 unit: str = "units", clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.stream, self.unit, self.clock = total, label, stream, unit, clock
        self.steps = max(1, round(1 / every))
        self.start, self.step = clock(), 0
        emit(f"{label}: 0/{total} {unit}", stream)

    def update(self, done: int) -> None:
        """``done`` units of ``total`` are finished (a count, not an increment)."""
        step = self.steps if done >= self.total else done * self.steps // max(1, self.total)
        if step > self.step:
            self.step = step
            emit(f"{self.label}: {done}/{self.total} {self.unit} ({100 * done // max(1, self.total)}%) "
                 f"{self.clock() - self.start:.0f} s", self.stream)
