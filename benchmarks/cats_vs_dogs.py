"""The cats-vs-dogs benchmark (docs/benchmarks.md): train the model if its checkpoint is missing, run
the five-run study of benchmarks/cats_vs_dogs.yaml exactly as a user would (the `repint` commands),
and write the machine-readable results to benchmarks/results/cats_vs_dogs.json.

    python benchmarks/cats_vs_dogs.py [--out runs/cats-vs-dogs-bench] [--retrain]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "cats_vs_dogs.yaml"
RESULTS = HERE / "results" / "cats_vs_dogs.json"
# the paper's Table 1, ASIRRA rows (mean ± std over 5 runs, percent)
PAPER_ASIRRA = {"RI": (2.00, 0.06, 30.72, 0.85), "Grad-CAM": (2.30, 0.09, 32.90, 0.39),
                "Grad-CAM++": (3.07, 0.02, 29.12, 0.42), "Score-CAM": (3.72, 0.09, 28.10, 0.28),
                "ACE": (36.27, 0.78, 1.36, 0.2)}


def _repint(*args: str) -> float:
    t = time.perf_counter()
    print("$ repint " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "repint.app.cli", *args], check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/cats-vs-dogs-bench")
    ap.add_argument("--retrain", action="store_true", help="train the model even if its checkpoint exists")
    args = ap.parse_args()
    from repint.config import load_config

    cfg = load_config(CONFIG)
    if not Path(cfg.data.reference or "").is_dir():
        print(f"The cats-vs-dogs data set is not at {cfg.data.reference}: this benchmark needs "
              "../shared/datasets/cats_vs_dogs next to the checkout.", file=sys.stderr)
        return 2
    ckpt = Path(cfg.model.checkpoint or "")
    train_wall = _repint("train", str(CONFIG)) if args.retrain or not ckpt.exists() else None
    model = json.loads(ckpt.with_suffix(".json").read_text())
    run_wall = _repint("run", str(CONFIG), "--out", args.out)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    import torch

    results = {
        "commands": ["repint train benchmarks/cats_vs_dogs.yaml",
                     f"repint run benchmarks/cats_vs_dogs.yaml --out {args.out}"],
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch": torch.__version__,
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model": {k: model.get(k) for k in ("architecture", "epochs", "train_accuracy", "test_accuracy",
                                            "train_seconds", "fingerprint")},
        "train_wall_s_this_call": train_wall, "run_wall_s": round(run_wall, 1),
        "data": {k: summary[k] for k in ("n_reference", "n_unseen", "n_classes", "n_interpretations")},
        "q": summary["q"], "q_sampling": summary["q_sampling"], "runs": summary["runs"], "seeds": summary["seeds"],
        "methods": {m: {k: r[k] for k in ("mAD", "mAD_std", "mAI", "mAI_std", "runs", "n", "per_run",
                                          "covered_unseen", "covered_unseen_std") if k in r}
                    for m, r in summary["methods"].items()},
        "polytopes_run0": summary["polytopes"],
        "paper_asirra": {m: {"mAD": v[0], "mAD_std": v[1], "mAI": v[2], "mAI_std": v[3]}
                         for m, v in PAPER_ASIRRA.items()},
        "timings_s": summary["timings_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    print(f"wrote {RESULTS}")
    return 0


def markdown_table(results: dict) -> str:
    """Our five-run table beside the paper's ASIRRA row (what docs/benchmarks.md shows)."""
    lines = ["| method | mAD (%) | mAI (%) | RI: covered unseen | paper ASIRRA mAD | paper ASIRRA mAI |",
             "|---|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        p = results["paper_asirra"].get(m)
        cov = f"{r['covered_unseen']:.0f} ± {r['covered_unseen_std']:.0f} / {r['n']}" if "covered_unseen" in r else ""
        paper = (f"{p['mAD']:.2f} ± {p['mAD_std']:.2f}", f"{p['mAI']:.2f} ± {p['mAI_std']:.2f}") if p else ("", "")
        lines.append(f"| {m} | {r['mAD']:.2f} ± {r['mAD_std']:.2f} | {r['mAI']:.2f} ± {r['mAI_std']:.2f} | {cov} | "
                     f"{paper[0]} | {paper[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
