"""Progress of a stage's tasks: a Prefect progress artifact (the UI) and, on stderr, a progress bar when
it is a terminal or plain lines when it is not (a log file, CI, ``nohup``): ``REPINT_PROGRESS=off|lines|bar``
forces one (``repint.progress``)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from tqdm import tqdm

from repint.progress import ProgressLine, progress_mode

__all__ = ["track"]


def track(futures: Sequence[PrefectFuture], key: str, description: str, unit: str = "units") -> list[Any]:
    """Wait for ``futures`` while moving a Prefect progress artifact and the stderr progress (bar or lines)."""
    if not futures:
        return []
    total = len(futures)
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower().replace("+", "p"))  # Prefect artifact keys: [a-z0-9-]
    art = create_progress_artifact(progress=0.0, key=key, description=description)
    mode = progress_mode(sys.stderr)
    lines = ProgressLine(total, key, sys.stderr, unit=unit) if mode == "lines" else None
    results, step = [], max(1, total // 20)
    with tqdm(total=total, desc=description, file=sys.stderr, leave=False, disable=mode != "bar") as bar:
        for i, fut in enumerate(as_completed(futures), 1):
            results.append(fut.result())
            bar.update(1)
            if lines:
                lines.update(i)
            if i % step == 0 or i == total:
                update_progress_artifact(art, progress=100.0 * i / total)
    return results
