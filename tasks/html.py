"""``report.html``: one self-contained static page per run, the Table-1 results, a gallery per
representative interpretation (its input, polytope, similar images and the unseen images it was reused
on) and the run's parameters and fingerprints. Figures are PNGs embedded as ``data:`` URIs, styles are
inline: the page needs no network and no other file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_link_artifact, create_table_artifact

from repint.heatmaps import display_image
from repint.methods import get_method
from repint.metrics import mask_images
from repint.results import Results, to_rows
from repint.storage import FeatureStore, redact_url
from repint.storage.layout import CENTRES, EVALUATE, INGEST, POLYTOPES
from repint.tasks.casestudy import representative_centres
from repint.tasks.common import logger, open_store, source
from repint.tasks.htmlfigures import curve_figures, figure_data_uri, per_class_table, png_data_uri, score_table
from repint.tasks.htmlindex import interpretation_index
from repint.tasks.interpret import load_interpretation
from repint.tasks.links import artifact_link
from repint.tasks.runspec import RunSpec

RI_EVALUATION = EVALUATE.of("RI")
REFERENCE = INGEST.of("reference")
UNSEEN = INGEST.of("unseen")
POLYTOPE = POLYTOPES.of()
CENTRE = CENTRES.of()

__all__ = ["MAX_REUSED", "TEMPLATES", "faithfulness", "figure_data_uri", "png_data_uri", "render_html",
           "results_rows", "write_html_report"]

TEMPLATES = Path(__file__).parent / "templates"
MAX_REUSED = 6  # unseen images shown per interpretation


def _hwc(image: np.ndarray) -> np.ndarray:
    return display_image(image)


def results_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The Table-1 rows of a study's or a single run's summary (``repint.results.to_rows``, view
    ``html``): per method mAD ± std, mAI ± std (percent; ± only for several runs), runs, images, RI's
    unseen coverage, the runs' scores."""
    return to_rows(Results.from_summary(summary), "html")


def reused_on(store: FeatureStore, centre: int, limit: int = MAX_REUSED) -> np.ndarray:
    """Unseen images RI reused interpretation ``centre`` on: covered ones first, at most ``limit``, sorted."""
    if RI_EVALUATION["centre"] not in store:
        return np.zeros(0, np.int64)
    assigned = store.read(RI_EVALUATION["centre"]) == centre
    covered = store.read(RI_EVALUATION["covered"])
    chosen = np.concatenate([np.flatnonzero(assigned & covered), np.flatnonzero(assigned & ~covered)])[:limit]
    return np.sort(chosen).astype(np.int64)


def reuse_figure(spec: RunSpec, store: FeatureStore, centre: int,
                 idx: np.ndarray) -> tuple[str | None, list[dict[str, Any]]]:
    """A PNG of RI's interpretation ``centre`` reused on unseen images ``idx`` (the image, the heat
    map with the kept pixels outlined, the masked image with ``Y -> Y'``) and one record per image."""
    if len(idx) == 0:
        return None, []
    from matplotlib.figure import Figure

    src = source(spec, "unseen")
    images = src.load(idx)
    feats = store.read_rows(UNSEEN["features"], idx)
    method, interp = get_method("RI"), load_interpretation(store, "RI", centre)
    maps = method.heatmaps(interp, images, feats)
    keep = method.keep_masks(interp, images, feats, spec.evaluation.keep_fraction)
    masked = mask_images(images, keep)
    ids, preds = store.read(UNSEEN["ids"])[idx], store.read(UNSEEN["predictions"])[idx]
    y, y_masked = store.read(RI_EVALUATION["y"])[idx], store.read(RI_EVALUATION["y_masked"])[idx]
    covered = store.read(RI_EVALUATION["covered"])[idx]
    names = src.class_names
    records = [{"index": int(i), "id": str(ids[j]), "class": names[int(preds[j])] if int(preds[j]) < len(names)
                else str(int(preds[j])), "covered": bool(covered[j]), "y": float(y[j]), "y_masked": float(y_masked[j])}
               for j, i in enumerate(idx)]
    # fixed margins and captions as text: tight_layout and axes titles cost seconds per figure
    fig = Figure(figsize=(max(2.1 * len(idx), 4.6), 7.0))
    axes = fig.subplots(3, len(idx), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=0.88, wspace=0.08, hspace=0.22)

    def caption(ax: Any, text: str) -> None:
        ax.text(0.5, 1.02, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=8)

    for j, rec in enumerate(records):
        img = _hwc(images[j])
        axes[0, j].imshow(img)
        caption(axes[0, j], f"{rec['id'][-18:]}\nclass {rec['class']}" + (" (covered)" if rec["covered"] else ""))
        axes[1, j].imshow(img)
        axes[1, j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[1, j].contour(keep[j].astype(float), levels=[0.5], colors="white", linewidths=0.8)
        caption(axes[1, j], "RI map, kept pixels")
        axes[2, j].imshow(_hwc(masked[j]))
        caption(axes[2, j], f"masked: Y {rec['y']:.3f} → Y' {rec['y_masked']:.3f}")
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.text(0.5, 0.985, f"interpretation {centre} reused on unseen images", ha="center", va="top", fontsize=10)
    return figure_data_uri(fig), records


def gallery(spec: RunSpec, store: FeatureStore, centre: int, figures: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One interpretation: its input, polytope size and coverage, the Fig.-2 figure written by the
    report task (input, top similar images, heat maps) and the unseen images it was reused on."""
    ref_ids = store.read(REFERENCE["ids"])
    x = int(store.read(CENTRE["input_index"])[centre])
    cls = int(store.read(CENTRE["predicted_class"])[centre])
    names = source(spec, "reference").class_names
    fig2 = Path(spec.out_dir) / f"interpretation-{centre}.png"
    info = figures.get(centre, {})
    n_assigned = int((store.read(RI_EVALUATION["centre"]) == centre).sum()) if RI_EVALUATION["centre"] in store else 0
    n_cov_unseen = int(((store.read(RI_EVALUATION["centre"]) == centre) & store.read(RI_EVALUATION["covered"])).sum()) \
        if RI_EVALUATION["covered"] in store else 0
    idx = reused_on(store, centre)
    reuse_png, reused = reuse_figure(spec, store, centre, idx)
    return {
        "centre": centre, "input_index": x, "input_id": str(ref_ids[x]),
        "class": names[cls] if cls < len(names) else str(cls),
        "size": int(store.read(POLYTOPE["size"], centre)), "n_covered": int(store.read(POLYTOPE["n_covered"], centre)),
        "n_other_covered": int(store.read(POLYTOPE["n_other_covered"], centre)),
        "purity": float(store.read(POLYTOPE["purity"], centre)),
        "similar_ids": [str(ref_ids[int(i)]) for i in info.get("similar", [])],
        "figure": png_data_uri(fig2.read_bytes()) if fig2.is_file() else None, "figure_name": fig2.name,
        "n_assigned_unseen": n_assigned, "n_covered_unseen": n_cov_unseen,
        "reuse_figure": reuse_png, "reused": reused,
    }


def case_study_images(folders: list[Path], out: Path) -> list[dict[str, str]]:
    """Every ``case-study-*.png`` in the output folder and the run folders, embedded."""
    seen: set[Path] = set()
    found = []
    for folder in folders:
        for path in sorted(folder.glob("case-study-*.png")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                name = str(path.relative_to(out))
            except ValueError:
                name = path.name
            found.append({"name": name, "uri": png_data_uri(path.read_bytes())})
    return found


def parameters(specs: list[RunSpec], summary: dict[str, Any], attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs: model, checkpoint and its hash, ψ, Q, seeds, evaluation settings, data."""
    spec = specs[0]
    model = {**spec.model, **attrs.get("model", {})}
    interp = {**spec.interpretation.model_dump(), **attrs.get("interpretation", {})}

    def js(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, default=str)

    pairs = [
        ("dataset", spec.dataset), ("model", model.get("architecture")), ("checkpoint", model.get("checkpoint")),
        ("checkpoint sha256", model.get("checkpoint_sha256")), ("layer (ψ)", model.get("layer")),
        ("layer chosen by", "layer: auto (repint layers)" if model.get("layer_choice") == "auto" else "the config"),
        ("weights found as", (model.get("checkpoint_format") or {}).get("description", "a plain state dict")
         if model.get("checkpoint") else model.get("weights") or "trained by RepInt"),
        ("classes", model.get("num_classes")), ("image size", model.get("image_size")),
        ("normalisation mean / std", f"{model.get('mean')} / {model.get('std')}"),
        ("|Q|", interp.get("q")), ("Q sampling", interp.get("q_sampling")),
        ("interpretations per class", interp.get("interpretations_per_class")),
        ("orient / unit normals", f"{interp.get('orient')} / {interp.get('unit_normals')}"),
        ("seeds", summary.get("seeds", [s.interpretation.seed for s in specs])),
        ("methods", spec.evaluation.methods), ("keep fraction", spec.evaluation.keep_fraction),
        ("reference images", summary.get("n_reference")), ("unseen images", summary.get("n_unseen")),
        ("boundaries sampled", summary.get("n_boundaries")),
        ("distinct boundaries", summary.get("n_distinct_boundaries")),
        ("reference data", attrs.get("data_reference", spec.reference)),
        ("unseen data", attrs.get("data_unseen", spec.unseen)),
        ("skipped images", (summary.get("skipped_images") or {}).get("count", 0)),
        ("|Q| clamped", summary.get("q_clamped", [])),
        ("runtime", spec.runtime.model_dump(include={"task_runner", "n_workers", "chunk_size", "batch_size",
                                                     "device"})),
    ]
    if summary.get("model_training"):
        pairs.append(("model training", summary["model_training"]))
    return [(k, js(v)) for k, v in pairs if v is not None]


def fingerprints(specs: list[RunSpec]) -> dict[str, Any]:
    """Per run: its store, store id, code version, data fingerprints; the first run's stage fingerprints."""
    runs, stages = [], []
    for i, spec in enumerate(specs):
        try:
            attrs = open_store(spec, mode="r").attrs
        except Exception:  # a store that cannot be opened is reported as such, not crashed on
            attrs = {}
        runs.append({"run": i, "seed": spec.interpretation.seed, "store": redact_url(spec.store),
                     "store_id": attrs.get("store_id", "?"), "code_version": attrs.get("code_version", "?"),
                     "data_reference": attrs.get("data_fingerprint_reference", "?"),
                     "data_unseen": attrs.get("data_fingerprint_unseen", "?"), "out_dir": spec.out_dir})
        if i == 0:
            stages = [{"stage": k, "fingerprint": v.get("fingerprint"), "complete": v.get("complete")}
                      for k, v in attrs.get("stages", {}).items()]
    return {"runs": runs, "stages": stages}


def run_timings(specs: list[RunSpec], out: Path) -> list[dict[str, Any]]:
    """Per-stage seconds of each run, from the run folders' ``summary.json`` (where a run has its own)."""
    found = []
    for i, spec in enumerate(specs):
        path = Path(spec.out_dir) / "summary.json"
        if Path(spec.out_dir).resolve() == out.resolve() or not path.is_file():
            continue
        try:
            timings = json.loads(path.read_text()).get("timings_s", {})
        except (OSError, ValueError):
            continue
        found.append({"run": i, "timings": {k: float(v) for k, v in timings.items()}})
    return found


def faithfulness(results: Results, class_names: list[str]) -> dict[str, Any]:
    """The template's faithfulness sections: ``scores`` (every metric per method and coverage split),
    ``curves`` (a PNG per deletion / insertion kind) and ``per_class``; ``None`` / ``[]`` where the
    summary lacks them (the sections are then left out)."""
    return {"scores": score_table(results), "curves": curve_figures(results),
            "per_class": per_class_table(results, class_names)}


def _class_names(spec: RunSpec, results: Results) -> list[str]:
    if not any(m.per_class for m in results.methods):
        return []
    try:
        return list(source(spec, "reference").class_names)
    except Exception:  # names are a nicety: the ids stand in
        return []


def render_html(context: dict[str, Any]) -> str:
    """Render ``templates/report.html.j2`` (autoescaped; a missing variable is an error)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


@task(name="html-report", task_run_name="html-report")
def write_html_report(specs: list[RunSpec], summary: dict[str, Any], out_dir: str) -> str:
    """Write ``out_dir/report.html`` for a study (or one run) and link it, and its table, as Prefect
    artifacts; returns the page's path. Galleries come from the first run's store. Figures are drawn
    on matplotlib ``Figure`` objects (Agg), never through pyplot's global state."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = specs[0]
    store = open_store(spec, mode="r")
    attrs = store.attrs
    case = int(spec.evaluation.case_studies)
    figures = {int(f["centre"]): f for f in summary.get("figures", [])}
    galleries = [gallery(spec, store, c, figures) for c in representative_centres(store, case)]
    table = Results.from_summary(summary)
    rows = to_rows(table, "html")
    folders = [out, *dict.fromkeys(Path(s.out_dir) for s in specs)]
    title = f"RepInt report: {summary.get('dataset', spec.dataset)}"
    context = {
        "title": title, "index": interpretation_index(spec, store, out, title),
        "summary": summary, "rows": rows, "runs": int(summary.get("runs", len(specs))),
        "polytopes": summary.get("polytopes", {}), "galleries": galleries,
        "case_studies": case_study_images(folders, out), "parameters": parameters(specs, summary, attrs),
        "fingerprints": fingerprints(specs),
        "timings": {k: float(v) for k, v in summary.get("timings_s", {}).items()},
        "run_timings": run_timings(specs, out),
        "keep_percent": 100 * spec.evaluation.keep_fraction,
        "n_distinct": summary.get("n_distinct_polytopes"),
        **faithfulness(table, _class_names(spec, table)),
    }
    path = out / "report.html"
    path.write_text(render_html(context), encoding="utf-8")
    uri = path.resolve().as_uri()
    link = artifact_link(spec, path)  # http(s) where it can be (repint serve, a presigned copy): tasks/links.py
    create_link_artifact(key="repint-report", link=link.url, link_text="report.html",
                         description=f"{context['title']}. {link.note}")
    create_table_artifact(key="repint-report-table",
                          table=to_rows(table, "html-table"),
                          description=f"Results in {path}")
    logger().info(f"report: {uri}")
    return str(path)
