"""The ``explain`` flow: new images explained by a store's interpretations, one task per chunk of images
(as ingest), into a results folder that is never overwritten; artifacts link the records and the PNGs.
Deployed from ``prefect.yaml`` (``explain-new-images``) for a serving team's schedule or event."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from repint.flows.progress import track
from repint.storage import is_secret_key, redact_url, split_url_credentials
from repint.tasks.explain import collect_explanations, explain_chunk, image_files, open_interpretations
from repint.tasks.links import report_link

__all__ = ["explain_flow", "results_folder"]

SHOWN = 50  # explanations listed in the run's markdown artifact


def results_folder(out: str | Path, new_folder: bool) -> Path:
    """``out`` itself, or a new ``out/explain-<UTC time>`` (never an existing one) for runs on a schedule."""
    base = Path(out).expanduser().resolve()
    if not new_folder:
        return base
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder, n = base / f"explain-{stamp}", 1
    while folder.exists():
        n += 1
        folder = base / f"explain-{stamp}-{n}"
    return folder


@flow(name="explain", flow_run_name="explain-{method}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def explain_flow(store: str, images: list[str], out: str, method: str = "RI", top: int = 4, chunk_size: int = 64,
                 new_folder: bool = True, checkpoint: str | None = None, device: str = "cpu", batch_size: int = 64,
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Explain the image files and folders ``images`` by ``method``'s interpretations in ``store``: PNGs and
    ``explanations.json`` / ``.csv`` in ``out`` (``new_folder``: a new ``out/explain-<time>`` per run).
    The store, its checkpoint, the method and the reference images are checked before the first chunk.
    Credentials never travel as parameters (Prefect keeps them in plain text): the store's filesystem takes
    them from the environment (``AWS_ACCESS_KEY_ID``, ...); ``storage_options`` holds the rest
    (``endpoint_url``, ...). ``new_folder=False`` writes into ``out`` itself, replacing what is there."""
    secrets = sorted(k for k in (storage_options or {}) if is_secret_key(k))
    if secrets or split_url_credentials(store, {})[1]:
        raise ValueError(f"explain: credentials ({', '.join(secrets) or 'in the store URL'}) would be stored in plain "
                         "text as flow parameters: give them to the workers' environment (AWS_ACCESS_KEY_ID, ...).")
    ri = open_interpretations(store, storage_options, checkpoint, device, batch_size)
    ri.method(method)  # a method the store has no interpretations of is an error now
    if top:
        ri.reference_source()  # the similar images drawn must be the store's
    folder = results_folder(out, new_folder)
    files, skipped = image_files(images, exclude=folder)
    folder.mkdir(parents=True, exist_ok=not new_folder)
    bounds = [(lo, min(lo + chunk_size, len(files))) for lo in range(0, len(files), chunk_size)]
    futures = [explain_chunk.submit(store, [str(f) for f in files[lo:hi]], str(folder), c, lo, method, top,
                                    storage_options, checkpoint, device, batch_size)
               for c, (lo, hi) in enumerate(bounds)]
    track(futures, f"explain-{method}", f"explain {len(files)} images", unit="chunks")
    meta = {"store": redact_url(store), "method": method, "top": top, "n_interpretations": ri.n_interpretations,
            "inputs": [str(i) for i in images], **ri.settings(method)}
    path = collect_explanations(str(folder), len(bounds), skipped, meta)
    return _artifacts(folder, Path(path))


def _artifacts(folder: Path, path: Path) -> dict[str, Any]:
    import json

    doc = json.loads(path.read_text())
    link = report_link(path)  # http under `repint serve` when REPINT_REPORTS_URL is set, else file:// (tasks/links.py)
    create_link_artifact(key="repint-explanations", link=link.url, link_text=path.name,
                         description=f"{doc['n_explained']} explanations in {folder}. {link.note}")
    lines = [f"# Explanations by {doc['method']}", "",
             f"{doc['n_explained']} images explained ({doc['n_covered']} covered by a polytope), "
             f"{doc['n_skipped']} skipped. Folder: `{folder}`", "",
             "| image | class | p | interpretation | reuse | similar | PNG |", "|---|---|---|---|---|---|---|"]
    for row in doc["explanations"][:SHOWN]:
        png = folder / row["png"]
        lines.append(f"| {Path(row['image']).name} | {row['class_name']} | {row['probability']:.3f} | "
                     f"{row['interpretation']} | {row['reuse']} | {' '.join(row['similar'])} | "
                     f"[{row['png']}]({report_link(png).url}) |")
    if doc["n_skipped"]:
        lines += ["", f"Skipped: {doc['n_skipped']} (listed in {path.name}), e.g. `{doc['skipped'][0]['id']}`: "
                      f"{doc['skipped'][0]['reason']}"]
    create_markdown_artifact(key="repint-explanations-table", markdown="\n".join(lines),
                             description="RepInt explanations")
    return {"folder": str(folder), "explanations": str(path), "n_explained": doc["n_explained"],
            "n_skipped": doc["n_skipped"], "n_covered": doc["n_covered"]}
