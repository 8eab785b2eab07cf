"""Deployment entry points (``prefect.yaml``): flows whose parameters are a config file and the fields
people change between runs, rather than a whole run spec.

- ``pipeline``: the study on a config (every run writes into ``out``).
- ``reinterpret``: a new version of the interpretations only when the checkpoint, the data or the
  settings changed since the last version in ``out``, with a drift report against that version.

Relative paths are relative to the working directory, which the deployments' pull step sets to the
checkout on the worker (``$REPINT_HOME``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from repint.config import Config, demo_config, load_config, override
from repint.flows.preflight import make_folder, preflight
from repint.flows.run import with_default_model
from repint.flows.spec import build_spec
from repint.flows.studies import study, study_specs
from repint.storage import FeatureStore, redact_url
from repint.tasks.common import logger
from repint.tasks.drift import drift_markdown, drift_report
from repint.tasks.html import write_html_report
from repint.tasks.runspec import RunSpec
from repint.tasks.versions import add_version, pending_version, read_index, start_version, version_fingerprints

__all__ = ["config_with_overrides", "reinterpret", "run_pipeline"]


def config_with_overrides(config: str | None, checkpoint: str | None = None, reference: str | None = None,
                          unseen: str | None = None, store: str | None = None, layer: str | None = None,
                          dask_address: str | None = None, runs: int | None = None) -> Config:
    """``config`` (a YAML path; ``None`` = the embedded demo) with the given fields replaced."""
    cfg = load_config(config) if config else demo_config()
    if checkpoint:
        cfg.model.checkpoint = str(Path(checkpoint).resolve()) if "://" not in checkpoint else checkpoint
    for key, value in (("reference", reference), ("unseen", unseen)):
        if value:
            setattr(cfg.data, key, str(Path(value).resolve()))
            if cfg.data.kind == "digits":
                cfg.data.kind = "arrays" if value.endswith(".npz") else "imagefolder"
    if store:
        cfg.store = store
    if layer:
        cfg.model.layer = layer
    if dask_address:
        cfg.runtime.dask_address = dask_address
    if runs is not None:
        override(cfg, "evaluation.runs", runs, "runs")
    return cfg


def _run_name(prefix: str) -> Any:
    """A flow run name from the ``out`` folder's name (``reinterpret-digits``), not its whole path."""

    def name() -> str:
        from prefect.runtime import flow_run

        return f"{prefix}-{Path(str(flow_run.parameters.get('out', prefix))).name}"

    return name


@flow(name="pipeline", flow_run_name=_run_name("pipeline"))
def run_pipeline(config: str | None = None, out: str = "runs/pipeline", checkpoint: str | None = None,
                 reference: str | None = None, unseen: str | None = None, store: str | None = None,
                 layer: str | None = None, dask_address: str | None = None, runs: int | None = None) -> dict[str, Any]:
    """The whole study on ``config`` (paths relative to the config file) with the given overrides;
    writes ``summary.json``, ``records.csv`` and ``report.html`` into ``out``."""
    cfg = config_with_overrides(config, checkpoint, reference, unseen, store, layer, dask_address, runs)
    preflight(cfg, out)  # the device and the output, before the first stage (as `repint run`)
    spec = build_spec(cfg, out)
    make_folder(out, "out")
    return study(spec, cfg.evaluation.runs)


def _version_store(cfg: Config, folder: Path, version: int) -> str | None:
    if not cfg.store:
        return None  # the default: OUT/vNNNN/store.zarr
    base = cfg.store[:-5] if cfg.store.endswith(".zarr") else cfg.store
    return f"{base}-v{version:04d}.zarr"


@flow(name="reinterpret", flow_run_name=_run_name("reinterpret"))
def reinterpret(config: str | None = None, out: str = "runs/reinterpret", checkpoint: str | None = None,
                reference: str | None = None, unseen: str | None = None, store: str | None = None,
                layer: str | None = None, dask_address: str | None = None, runs: int | None = None,
                force: bool = False) -> dict[str, Any]:
    """Re-interpret after retraining: fingerprint the checkpoint, the data and the settings; if none
    changed since the last version in ``out``, finish at once (``status: unchanged``); otherwise
    write version ``N+1`` into ``out/vNNNN`` (never over an earlier one) and a drift report against
    version ``N`` (``drift.json``, ``drift.md``, Prefect artifacts, a section of ``report.html``)."""
    log = logger()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg = config_with_overrides(config, checkpoint, reference, unseen, store, layer, dask_address, runs)
    spec, _ = with_default_model(build_spec(cfg, root / "pending"))
    fps = version_fingerprints(spec)
    versions = read_index(root)
    last = versions[-1] if versions else None
    changed = [k for k in ("model", "data", "settings") if last is None or last["fingerprints"].get(k) != fps[k]]
    if last is not None and not changed and not force:
        text = (f"# No change\n\nCheckpoint, data and settings are those of version {last['version']} "
                f"({last['out_dir']}); nothing re-interpreted.")
        create_markdown_artifact(key="repint-reinterpret", markdown=text, description="reinterpret: no change")
        log.info(f"no change since version {last['version']}: nothing to do")
        return {"status": "unchanged", "version": last["version"], "out_dir": last["out_dir"], "fingerprints": fps}

    version = pending_version(root, versions, fps)
    folder = start_version(root, version, fps)
    spec = spec.model_copy(update={"out_dir": str(folder),
                                   "store": _version_store(cfg, folder, version) or str(folder / "store.zarr")})
    log.info(f"version {version}: {', '.join(changed) or 'forced'} changed; interpreting into {folder}")
    summary = study(spec, cfg.evaluation.runs, html=False)
    specs = study_specs(spec, cfg.evaluation.runs)
    first = specs[0]
    result: dict[str, Any] = {"status": "new-version", "version": version, "changed": changed or ["forced"],
                              "out_dir": str(folder), "fingerprints": fps}
    if last is not None:
        drift = write_drift(last, first, summary, version, changed, folder)
        summary["drift"] = drift
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        result["drift"] = {k: v for k, v in drift.items() if k not in ("centres", "methods")}
    write_html_report(specs, summary, str(folder))
    add_version(root, {"version": version, "fingerprints": fps, "changed": changed, "out_dir": str(folder),
                       "store": redact_url(first.store), "storage_options_keys": sorted(first.storage_options),
                       "checkpoint": spec.model.get("checkpoint"), "image_size": spec.model["image_size"],
                       "methods": {m: {k: r[k] for k in ("mAD", "mAI")} for m, r in summary["methods"].items()}})
    return result


def write_drift(last: dict[str, Any], first: RunSpec, summary: dict[str, Any], version: int,
                changed: list[str], folder: Path) -> dict[str, Any]:
    """Drift of the new version's first run against the last version's; written next to the new
    version and shown as Prefect artifacts."""
    prev = FeatureStore(last["store"], first.storage_options, mode="r")
    new = FeatureStore(first.store, first.storage_options, mode="r")
    drift = drift_report(prev, new, int(first.model["image_size"]), last.get("methods", {}), summary["methods"])
    drift.update({"previous_version": last["version"], "version": version, "changed": changed})
    md = drift_markdown(drift, last["version"], version, changed)
    (folder / "drift.json").write_text(json.dumps(drift, indent=2))
    (folder / "drift.md").write_text(md)
    create_markdown_artifact(key="repint-drift", markdown=md, description=f"drift {last['version']} -> {version}")
    create_table_artifact(key="repint-drift-centres", table=[
        {k: c.get(k) for k in ("centre", "class", "previous_centre", "jaccard", "size_prev", "size",
                               "heatmap_correlation", "mAD_prev", "mAD", "mAI_prev", "mAI")}
        for c in drift["centres"]], description=f"per-centre drift, version {last['version']} -> {version}")
    return drift
