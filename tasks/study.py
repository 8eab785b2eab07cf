"""The multi-run study: per-image records of every run as CSV, mean ± std per method, Table-1 artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from repint.storage import redact_url
from repint.tasks.common import RunSpec, open_store


def run_records(spec: RunSpec, run: int) -> pd.DataFrame:
    """One row per (method, unseen image) of one run."""
    store = open_store(spec, mode="r")
    ids = store.read("unseen/ids")
    preds = store.read("unseen/predictions")
    labels = store.read("unseen/labels")
    frames = []
    for method in spec.evaluation["methods"]:
        frames.append(pd.DataFrame({
            "method": method, "run": run, "seed": spec.interpretation["seed"], "image_id": ids,
            "class": preds, "label": labels, "centre": store.read(f"evaluation/{method}/centre"),
            "covered": store.read(f"evaluation/{method}/covered"), "Y": store.read(f"evaluation/{method}/y"),
            "Y_masked": store.read(f"evaluation/{method}/y_masked")}))
    return pd.concat(frames, ignore_index=True)


def aggregate(per_run: list[dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """mean ± std (sample std over runs; 0 for one run) of mAD and mAI per method."""
    out: dict[str, dict[str, Any]] = {}
    for method in per_run[0]:
        ad = np.array([r[method]["mAD"] for r in per_run])
        ai = np.array([r[method]["mAI"] for r in per_run])
        ddof = 1 if len(per_run) > 1 else 0
        entry: dict[str, Any] = {"mAD": float(ad.mean()), "mAD_std": float(ad.std(ddof=ddof)),
                                 "mAI": float(ai.mean()), "mAI_std": float(ai.std(ddof=ddof)),
                                 "runs": len(per_run), "n": per_run[0][method]["n"],
                                 "per_run": [{"mAD": float(a), "mAI": float(i)} for a, i in zip(ad, ai, strict=True)]}
        if "covered_unseen" in per_run[0][method]:
            cov = np.array([r[method]["covered_unseen"] for r in per_run])
            entry["covered_unseen"] = float(cov.mean())
            entry["covered_unseen_std"] = float(cov.std(ddof=ddof))
        out[method] = entry
    return out


def table1(dataset: str, methods: dict[str, dict[str, Any]]) -> str:
    lines = ["| Datasets | Methods | mAD (%) | mAI (%) |", "|---|---|---|---|"]
    for i, (m, r) in enumerate(methods.items()):
        lines.append(f"| {dataset if i == 0 else ''} | {m} | {r['mAD']:.2f} ± {r['mAD_std']:.2f} | "
                     f"{r['mAI']:.2f} ± {r['mAI_std']:.2f} |")
    return "\n".join(lines)


@task(name="study-report", task_run_name="study-report")
def write_study(specs: list[RunSpec], summaries: list[dict[str, Any]], out_dir: str,
                timings: dict[str, float], variant_specs: list[tuple[RunSpec, int]] | None = None) -> dict[str, Any]:
    """``summary.json`` (per-method mean ± std), ``records.csv`` and the Table-1 artifacts.

    ``variant_specs`` are the (spec, run) pairs of RI variants evaluated in stores of their own."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = pd.concat([run_records(s, i) for i, s in enumerate(specs)]
                        + [run_records(s, i) for s, i in variant_specs or []], ignore_index=True)
    records.to_csv(out / "records.csv", index=False)
    methods = aggregate([s["methods"] for s in summaries])
    first = summaries[0]
    summary = {**{k: v for k, v in first.items() if k not in ("methods", "figures", "timings_s", "store")},
               "runs": len(summaries), "seeds": [s.interpretation["seed"] for s in specs], "methods": methods,
               "run_dirs": [s.out_dir for s in specs], "figures": first.get("figures", []),
               "timings_s": {k: round(v, 3) for k, v in timings.items()}, "store": redact_url(first["store"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    rows = [{"method": m, "mAD (%)": f"{r['mAD']:.2f} ± {r['mAD_std']:.2f}",
             "mAI (%)": f"{r['mAI']:.2f} ± {r['mAI_std']:.2f}", "runs": r["runs"]} for m, r in methods.items()]
    create_table_artifact(key="repint-table-1", table=rows, description=f"Table 1 on {first['dataset']}")
    create_markdown_artifact(key="repint-table-1-md", markdown=f"# RepInt study on {first['dataset']}\n\n"
                             f"{len(specs)} runs (seeds {summary['seeds']}).\n\n" + table1(first["dataset"], methods))
    return summary
