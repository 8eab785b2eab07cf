"""Report: summary.json, figures of a few interpretations (Fig. 2 style) and Prefect artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from repint.heatmaps import display_image
from repint.methods import get_method
from repint.results import Results, to_markdown, to_rows
from repint.scoretable import per_class_markdown, scores_markdown
from repint.storage import redact_url
from repint.storage.layout import BOUNDARIES, CENTRES, EVALUATE, INGEST, POLYTOPES
from repint.tasks.casestudy import case_study, eq6_neighbours, representative_centres
from repint.tasks.common import n_distinct_polytopes, open_store, source
from repint.tasks.interpret import load_interpretation
from repint.tasks.runspec import RunSpec
from repint.variants import Variant

REFERENCE = INGEST.of("reference")
UNSEEN = INGEST.of("unseen")
POLYTOPE = POLYTOPES.of()
CENTRE = CENTRES.of()
BOUNDARY = BOUNDARIES.of()
FIGURE_SIMILAR = 4  # similar images in the figures and case studies (Eq. 6; and Euclidean in the case studies)


def _figure(spec: RunSpec, store, centre: int, path: Path, similar: np.ndarray) -> dict[str, Any]:  # noqa: ANN001
    """An input, its ``similar`` covered reference images (Eq. 6) and RI's heat maps of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = int(store.read(CENTRE["input_index"])[centre])
    ids = store.read(POLYTOPE["boundaries"], centre)
    ids = ids[ids >= 0]
    shown = np.concatenate([[x], similar]).astype(int)
    images = source(spec, "reference").load(shown)
    interp = load_interpretation(store, "RI", centre)
    maps = get_method("RI").heatmaps(interp, images, store.read_rows(REFERENCE["features"], shown))
    fig, axes = plt.subplots(2, len(shown), figsize=(2.2 * len(shown), 4.6), squeeze=False)
    for j in range(len(shown)):
        img = display_image(images[j])
        axes[0, j].imshow(img)
        axes[0, j].set_title("input" if j == 0 else f"similar #{j}", fontsize=9)
        axes[1, j].imshow(img)
        axes[1, j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for ax in axes[:, j]:
            ax.axis("off")
    n_cov = int(store.read(POLYTOPE["n_covered"], centre))
    fig.suptitle(f"interpretation {centre}: |P| = {len(ids)} boundaries, covers {n_cov} reference images",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"centre": centre, "input": x, "similar": similar.tolist(), "png": path.name}


@task(name="report", task_run_name="report")
def write_report(spec: RunSpec, results: dict[str, dict], timings: dict[str, float],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``summary.json`` and the figures into the output folder, and the Prefect artifacts."""
    store = open_store(spec)
    for stage in (CENTRE.name, POLYTOPE.name, *(EVALUATE.of(Variant.parse(m).key).name for m in results)):
        store.require_complete(stage)  # never a report from a stage that did not finish
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attrs = store.attrs
    n_cov = store.read(POLYTOPE["n_covered"])
    size = store.read(POLYTOPE["size"])
    summary: dict[str, Any] = {
        "dataset": spec.dataset,
        "model": spec.model["architecture"],
        "checkpoint": spec.model.get("checkpoint"),
        "layer": spec.model["layer"],
        "layer_choice": spec.model.get("layer_choice", "config"),  # auto: `repint layers`' recommendation
        "checkpoint_format": spec.model.get("checkpoint_format"),  # nested key / prefixes removed, if any
        "weights": spec.model.get("weights"),  # torchvision's pretrained weights, if used
        "n_reference": store.shape(REFERENCE["predictions"])[0],
        "n_unseen": store.shape(UNSEEN["predictions"])[0],
        "n_classes": store.shape(REFERENCE["logits"])[1],
        "n_interpretations": store.shape(CENTRE["input_index"])[0],
        "q": spec.interpretation.q,
        "q_sampling": spec.interpretation.q_sampling,
        "n_boundaries": store.shape(BOUNDARY["b"])[0],
        "n_distinct_boundaries": attrs.get("n_distinct_boundaries"),
        "n_distinct_polytopes": n_distinct_polytopes(store),
        "polytopes": {"mean_size": float(size.mean()), "mean_covered": float(n_cov.mean()),
                      "mean_purity": float(np.nanmean(store.read(POLYTOPE["purity"])))},
        "methods": results,
        "skipped_images": {"count": len(attrs.get("skipped_reference", [])) + len(attrs.get("skipped_unseen", [])),
                           "reference": attrs.get("skipped_reference", []), "unseen": attrs.get("skipped_unseen", [])},
        "q_clamped": attrs.get("q_clamped", []),
        "interpretations_clamped": attrs.get("interpretations_clamped", []),
        "zero_features_reference": attrs.get("zero_features_reference", 0),
        "kmeans": attrs.get("kmeans", {"algorithm": "exact"}),  # the fit of the centres (stores before it: exact)
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "store": redact_url(spec.store),  # never credentials in URL user info
        **(extra or {}),
    }
    case = int(spec.evaluation.case_studies)
    chosen = representative_centres(store, case)
    near = eq6_neighbours(spec, store, chosen, FIGURE_SIMILAR)  # one pass over the reference chunks for all
    summary["figures"] = [_figure(spec, store, c, out / f"interpretation-{c}.png", near[c]) for c in chosen
                          if "RI" in spec.evaluation.methods]
    summary["case_studies"] = [case_study(spec, store, c, out / f"case-study-{c}.png", near[c], FIGURE_SIMILAR)
                               for c in chosen]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    table = Results.from_methods(results, spec.dataset, n_unseen=summary["n_unseen"])
    create_table_artifact(key="repint-ad-ai", table=to_rows(table, "run"), description=f"AD/AI on {spec.dataset}")
    md = [f"# RepInt run on {spec.dataset}", "",
          f"{summary['n_reference']} reference / {summary['n_unseen']} unseen images, "
          f"{summary['n_interpretations']} interpretations ({summary['n_distinct_polytopes']} distinct polytopes), "
          f"|Q| = {summary['q']} ({summary['q_sampling']}).", "",
          to_markdown(table), "", "Every metric split by RI's coverage (↓ lower is better, ↑ higher):", "",
          scores_markdown(table), "", "Per predicted class:", "", per_class_markdown(table)]
    md += ["", f"Polytopes: mean size {summary['polytopes']['mean_size']:.1f}, mean coverage "
               f"{summary['polytopes']['mean_covered']:.1f} reference images.", f"Output: `{out}`"]
    create_markdown_artifact(key="repint-summary", markdown="\n".join(md), description="RepInt summary")
    return summary
