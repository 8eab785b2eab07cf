"""The multi-run study: per-image records of every run as CSV, mean ± std per method, Table-1 artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from repint.results import Results, to_markdown, to_rows
from repint.scoretable import scores_markdown
from repint.scoring import ScoreSettings, per_image_columns
from repint.storage import redact_url
from repint.storage.layout import ASSIGNMENT, INGEST
from repint.tasks.common import open_store
from repint.tasks.evaluate import evaluation_records
from repint.tasks.runspec import RunSpec


def run_records(spec: RunSpec, run: int) -> pd.DataFrame:
    """One row per (method, unseen image) of one run: its assignment (``covered``: inside the polytope
    the method reused; ``ri_covered``: inside one of RI's, the tables' split) and every per-image value
    of :func:`repint.scoring.per_image_columns`."""
    store, unseen = open_store(spec, mode="r"), INGEST.of("unseen")
    ids, preds, labels = (store.read(unseen[name]) for name in ("ids", "predictions", "labels"))
    ri_covered = store.read(ASSIGNMENT.of()["ri_covered"])
    settings = ScoreSettings.of(spec.evaluation, spec.runtime.batch_size, spec.interpretation.seed)
    frames = []
    for method in spec.methods:
        rec = evaluation_records(store, method)
        frames.append(pd.DataFrame({
            "method": method.label, "run": run, "seed": spec.interpretation.seed, "image_id": ids,
            "class": preds, "label": labels, "centre": rec["centre"], "covered": rec["covered"],
            "ri_covered": ri_covered, "Y": rec["y"], "Y_masked": rec["y_masked"],
            **per_image_columns(rec, settings)}))
    return pd.concat(frames, ignore_index=True)


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
    first = summaries[0]
    table = Results.aggregate([s["methods"] for s in summaries], dataset=first["dataset"],
                              n_unseen=first.get("n_unseen"))
    methods = table.methods_dict()
    summary = {**{k: v for k, v in first.items() if k not in ("methods", "figures", "timings_s", "store")},
               "runs": len(summaries), "seeds": [s.interpretation.seed for s in specs], "methods": methods,
               "run_dirs": [s.out_dir for s in specs], "figures": first.get("figures", []),
               "timings_s": {k: round(v, 3) for k, v in timings.items()}, "store": redact_url(first["store"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    create_table_artifact(key="repint-table-1", table=to_rows(table, "study"),
                          description=f"Table 1 on {first['dataset']}")
    create_markdown_artifact(key="repint-table-1-md", markdown=f"# RepInt study on {first['dataset']}\n\n"
                             f"{len(specs)} runs (seeds {summary['seeds']}).\n\n" + to_markdown(table, table1=True)
                             + "\n\nEvery metric split by RI's coverage (↓ lower is better, ↑ higher):\n\n"
                             + scores_markdown(table))
    return summary
