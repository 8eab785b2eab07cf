"""`reinterpret`: no work when nothing changed, a new version plus a drift report when the checkpoint
changed, earlier versions never touched; drift of a version against an identical one is exactly no drift."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_yaml

pytestmark = pytest.mark.slow

def _tree(folder):  # noqa: ANN001, ANN202
    """Every file under ``folder`` with its modification time and size."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def history(prefect_harness, repint_cache, tmp_path_factory):
    from repint.app.cli import main
    from repint.flows.entry import reinterpret

    folder = tmp_path_factory.mktemp("reinterpret")
    cfg = folder / "tiny.yaml"
    ckpt = folder / "model.pt"
    cfg.write_text(tiny_yaml(ckpt, runner="threads"))
    assert main(["train", str(cfg), "--no-event"]) == 0
    out = folder / "versions"
    first = reinterpret(config=str(cfg), out=str(out))
    v1_files = _tree(out / "v0001")
    again = reinterpret(config=str(cfg), out=str(out))
    same = reinterpret(config=str(cfg), out=str(out), force=True)
    # "retraining": the same network with its head's weights moved a little
    state = torch.load(ckpt, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if v.dtype.is_floating_point and k.endswith("weight") and v.ndim == 4:
            state[k] = v + 0.05 * v.std() * torch.randn(v.shape, generator=gen)
    torch.save(state, ckpt)
    retrained = reinterpret(config=str(cfg), out=str(out))
    return {"out": out, "first": first, "again": again, "same": same, "retrained": retrained, "v1_files": v1_files}


def test_first_run_writes_version_1(history):
    out, first = history["out"], history["first"]
    assert first["status"] == "new-version" and first["version"] == 1
    assert first["changed"] == ["model", "data", "settings"] and "drift" not in first
    summary = json.loads((out / "v0001" / "summary.json").read_text())
    assert set(summary["methods"]) == {"RI", "Grad-CAM"}


def test_unchanged_inputs_do_nothing(history):
    again, out = history["again"], history["out"]
    assert again["status"] == "unchanged" and again["version"] == 1
    index = json.loads((out / "versions.json").read_text())["versions"]
    assert [v["version"] for v in index] == [1, 2, 3]  # v2 forced, v3 retrained; the no-op added none


def test_earlier_versions_are_never_overwritten(history):
    out = history["out"]
    assert _tree(out / "v0001") == history["v1_files"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["v0001", "v0002", "v0003"]


def test_drift_against_an_identical_version_is_none(history):
    """Forced with the same checkpoint and data: same polytopes, same maps, same scores."""
    same = history["same"]
    assert same["version"] == 2 and same["changed"] == ["forced"]
    drift = json.loads((history["out"] / "v0002" / "drift.json").read_text())
    assert drift["n_matched"] == drift["n_centres"] == drift["n_centres_prev"] == 10
    assert 1 <= drift["n_distinct_polytopes"] == drift["n_distinct_polytopes_prev"] <= 10  # the same covered sets
    for c in drift["centres"]:
        assert c["previous_centre"] == c["centre"]
        assert c["jaccard"] == 1.0 and c["size_change"] == 0
        assert c["heatmap_correlation"] == pytest.approx(1.0, abs=1e-6)
        assert c["mAD"] == c["mAD_prev"] and c["mAI"] == c["mAI_prev"]
    for r in drift["methods"].values():
        assert r["mAD_change"] == 0 and r["mAI_change"] == 0


def test_a_changed_checkpoint_gives_a_new_version_and_drift(history):
    r, out = history["retrained"], history["out"]
    assert r["status"] == "new-version" and r["version"] == 3 and r["changed"] == ["model"]
    drift = json.loads((out / "v0003" / "drift.json").read_text())
    assert drift["previous_version"] == 2 and drift["changed"] == ["model"]
    assert 0 < drift["n_matched"] <= drift["n_centres"]
    jac = [c["jaccard"] for c in drift["centres"] if c["previous_centre"] is not None]
    assert all(0 <= j <= 1 for j in jac) and drift["mean_jaccard"] == pytest.approx(sum(jac) / len(jac), abs=1e-4)
    corr = [c["heatmap_correlation"] for c in drift["centres"] if c.get("heatmap_correlation") is not None]
    assert corr and all(-1 <= x <= 1 for x in corr)
    # a small change of the weights moves some of it (not all identical) but keeps most of it
    assert drift["mean_jaccard"] > 0.3
    assert any(c["jaccard"] < 1 or c["size_change"] != 0 or c["heatmap_correlation"] < 0.999
               for c in drift["centres"] if c["previous_centre"] is not None)
    summary = json.loads((out / "v0003" / "summary.json").read_text())
    for m, d in drift["methods"].items():
        assert d["mAD"] == summary["methods"][m]["mAD"]
        assert d["mAD_change"] == pytest.approx(d["mAD"] - d["mAD_prev"], abs=1e-3)
    md = (out / "v0003" / "drift.md").read_text()
    assert "# Drift: version 2 → 3" in md and "| RI |" in md
    html = (out / "v0003" / "report.html").read_text()
    assert 'id="drift-heading"' in html and 'id="drift-centres"' in html
    distinct = [f"({drift[k]} distinct polytopes)" for k in ("n_distinct_polytopes", "n_distinct_polytopes_prev")]
    assert all(d in md for d in distinct) and all(d in " ".join(html.split()) for d in distinct)


def test_drift_is_a_prefect_artifact(history):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    wanted = ["repint-drift", "repint-drift-centres", "repint-reinterpret"]

    async def read():  # noqa: ANN202  (by key: the session's server holds every test's artifacts, past one page)
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))

    import asyncio

    arts = asyncio.run(read())
    keys = {a.key for a in arts}
    assert set(wanted) <= keys
    md = [a for a in arts if a.key == "repint-drift"]
    assert any("version 2 → 3" in str(a.data) for a in md)
