"""What every measurement shares: the result record, timing in alternating rounds, medians, the
machine's load."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Result = dict[str, Any]
DEFAULT_OUT = Path("benchmarks") / "results"
CHILD_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def result(stage: str, ratio: float | None, target: str, passed: bool | None, measured: str, reference: str,
           **details: Any) -> Result:
    """One line of the table: the stage's figure, its reference's, their ratio (or the value a limit
    applies to), the target and whether it is met; ``details`` go to the JSON only."""
    return {"stage": stage, "measured": measured, "reference": reference, "ratio": ratio, "target": target,
            "pass": passed, "details": details}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls of ``fn`` after one untimed warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def alternating(fns: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds in which each of ``fns`` runs once, in turn, so that the
    machine's load drifts alike for all of them (after one untimed warm-up round)."""
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def med(times: list[float]) -> float:
    return statistics.median(times)


def rounded(times: list[float], scale: float = 1.0, digits: int = 4) -> list[float]:
    return [round(scale * t, digits) for t in times]

def once(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn``."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

