"""Versions of the interpretations in a ``reinterpret`` folder: what each was made from, and the index.

Layout of the folder ``OUT`` (see the README's runbook)::

    OUT/versions.json        {"versions": [{version, created, fingerprints, out_dir, store, ...}, ...]}
    OUT/v0001/               a complete study: store.zarr, summary.json, report.html, records.csv
    OUT/v0002/               ... plus drift.json and drift.md against the version before

A version enters the index only after its study finished, and the index is replaced atomically
(write, fsync, rename), so a run that dies never leaves a half-listed version; the next run resumes
the unlisted folder (its store's stages are resumable) instead of starting another.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel

from repint.storage import fingerprint_params
from repint.tasks.common import source
from repint.tasks.runspec import RunSpec

__all__ = ["INDEX", "add_version", "pending_version", "read_index", "version_fingerprints"]

INDEX = "versions.json"
#: settings added after versions were first fingerprinted: hashed only once they leave their default,
#: so that an index written before them does not see a change that is none
LATER_SETTINGS = {"interpretation": ("solver",),
                  "evaluation": ("fallback", "metrics", "keep_fractions", "curve_steps", "baselines")}


def _settings(section: str, config: BaseModel) -> dict[str, Any]:
    values = config.model_dump()
    for name in LATER_SETTINGS.get(section, ()):
        if values.get(name) == type(config).model_fields[name].get_default(call_default_factory=True):
            values.pop(name)
    return values


@task(name="fingerprint-inputs", task_run_name="fingerprint-inputs")
def version_fingerprints(spec: RunSpec) -> dict[str, str]:
    """What a version was made from: the checkpoint's bytes (``model``), the reference and unseen
    images' bytes (``data``), and every setting that changes the result (``settings``: architecture,
    layer, interpretation and evaluation settings)."""
    model = {k: v for k, v in spec.model.items() if k not in ("checkpoint", "checkpoint_sha256")}
    return {
        "model": str(spec.model.get("checkpoint_sha256")),
        "data": fingerprint_params(source(spec, "reference").content_fingerprint(),
                                   source(spec, "unseen").content_fingerprint()),
        "settings": fingerprint_params(model, _settings("interpretation", spec.interpretation),
                                       _settings("evaluation", spec.evaluation)),
    }


def read_index(root: Path) -> list[dict[str, Any]]:
    """The listed (complete) versions, oldest first."""
    path = root / INDEX
    if not path.exists():
        return []
    try:
        versions = json.loads(path.read_text())["versions"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a RepInt versions index ({exc}); move it away to start a new history.")\
            from None
    return list(versions)


def pending_version(root: Path, versions: list[dict[str, Any]], fingerprints: dict[str, str]) -> int:
    """The number of the version to write: an unlisted folder left by a run that died with the same
    inputs is resumed; otherwise the next number after every folder present (never an existing one)."""
    listed = {int(v["version"]) for v in versions}
    present = sorted(int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())
    for n in reversed(present):
        if n in listed:
            break
        marker = root / f"v{n:04d}" / "version.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprints") == fingerprints:
            return n
    return max([0, *present, *listed]) + 1


def start_version(root: Path, version: int, fingerprints: dict[str, str]) -> Path:
    """Create ``OUT/vNNNN`` with a marker of its inputs (read by :func:`pending_version`)."""
    folder = root / f"v{version:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "version.json").write_text(json.dumps({"version": version, "fingerprints": fingerprints}, indent=2))
    return folder


def add_version(root: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``entry`` to the index, atomically."""
    versions = [*read_index(root), {**entry, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    tmp = root / f".{INDEX}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"versions": versions}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / INDEX)
    return versions
