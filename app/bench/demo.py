"""``repint demo`` end to end, training included, against its time limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repint.app.bench.common import CHILD_ENV, Result, result


def bench_demo(limit_s: float = 180, timeout: float = 1200) -> Result:
    """``repint demo`` end to end in a subprocess with an empty model cache (training included)."""
    stage = "demo end to end (training included)"
    with tempfile.TemporaryDirectory(prefix="repint-bench-demo-") as tmp:
        out = Path(tmp, "demo")
        env = {**os.environ, **CHILD_ENV, "REPINT_CACHE": str(Path(tmp, "cache"))}
        cmd = [sys.executable, "-m", "repint.app.cli", "demo", "--out", str(out)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return result(stage, None, f"< {limit_s:g} s", False, "n/a", f"limit {limit_s:g} s",
                          error=f"timed out after {timeout:g} s")
        wall = time.perf_counter() - t
        if proc.returncode:
            return result(stage, wall / limit_s, f"< {limit_s:g} s", False, f"{wall:.0f} s", f"limit {limit_s:g} s",
                          error=f"exit code {proc.returncode}", stderr_tail=proc.stderr[-3000:])
        timings = json.loads(Path(out, "summary.json").read_text()).get("timings_s", {})
    return result(stage, wall / limit_s, f"< {limit_s:g} s", wall < limit_s, f"{wall:.0f} s", f"limit {limit_s:g} s",
                  timings_s={k: round(v, 2) for k, v in timings.items()})

