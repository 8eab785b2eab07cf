"""The tables of docs/fidelity.md from studies' summaries: every metric split by RI's coverage, the
per-class table and the polytopes, as markdown.

    python benchmarks/fidelity_tables.py runs/digits/summary.json runs/cats/summary.json > tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from repint.results import Results, to_markdown
from repint.scoretable import per_class_markdown, scores_markdown

#: the metric groups of the tables (a group a summary lacks is left out)
GROUPS = (("AD/AI, the rest black", ("mAD", "mAI", "AD@10", "AI@10", "AD@50", "AI@50")),
          ("Deletion / insertion AUC (x100)", ("deletion-black", "insertion-black", "deletion-blur", "insertion-blur")),
          ("ROAD: the rest (keep) or the top (remove) imputed; drop of Y in %",
           ("ROAD-keep@10", "ROAD-remove@10", "ROAD-keep@20", "ROAD-remove@20", "ROAD-keep@50", "ROAD-remove@50")),
          ("Representativeness: mean pairwise rank correlation of the reused maps", ("rank-agreement",)))


PER_CLASS = ("RI", "Grad-CAM", "Grad-CAM++", "Score-CAM", "ACE", "RI-exact", "Grad-CAM-exact")


def tables(path: str) -> str:
    summary = json.loads(Path(path).read_text())
    res = Results.from_summary(summary)
    distinct = {m.method: m.distinct_polytopes for m in res.methods if m.distinct_polytopes is not None}
    head = (f"### {summary['dataset']}: {summary['n_reference']} reference / {summary['n_unseen']} unseen images, "
            f"{summary['n_interpretations']} interpretations, {summary.get('runs', 1)} runs")
    lines = [head, "", to_markdown(res, table1=True), "",
             "Distinct polytopes (distinct covered sets) of the |V| centres: "
             + ", ".join(f"{k} {v:.1f}" for k, v in distinct.items()), "",
             *(part for title, keys in GROUPS for part in (f"**{title}**", "", scores_markdown(res, keys), "")),
             "Per predicted class, the paper's methods and the RI-exact pair (all unseen images of the class):", "",
             per_class_markdown(Results(tuple(m for m in res.methods if m.method in PER_CLASS), res.dataset,
                                        res.runs, res.n_unseen))]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(tables(p) for p in sys.argv[1:]))
