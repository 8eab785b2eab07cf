"""report.html: a tiny study's page carries summary.json's numbers and the store's scores, embeds every
figure as a PNG data URI, reaches for nothing on the network, and renders in a real headless Chromium
with no console error (checked over the DevTools protocol; a screenshot is taken). Its index lists every
interpretation with the store's numbers, links each one's own page (small embedded thumbnails) and sorts
by a clicked header in the browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from repint.storage import FeatureStore

pytestmark = pytest.mark.slow

DATA_PNG = "data:image/png;base64,"


class _Page(HTMLParser):
    """The parts of the page the test checks: every src/href, the images (and their alt text), the tables by
    id (cell texts, and beside them each cell's class and data-value and each row's data- attributes), the
    galleries, the text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.alts: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.classes: dict[str, list[list[str]]] = {}
        self.row_data: dict[str, list[dict[str, str]]] = {}
        self.values: dict[str, list[list[str | None]]] = {}
        self.text: list[str] = []
        self.sections: list[str] = []
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._tables: list[list[list[str]]] = []
        self._id: list[str] = []

    @classmethod
    def of(cls, path: Path) -> _Page:
        page = cls()
        page.feed(path.read_text(encoding="utf-8"))
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "img":
            self.images.append(a.get("src") or "")
            self.alts.append(a.get("alt") or "")
        elif tag == "section" and (a.get("id") or "").startswith("interpretation-"):
            self.sections.append(a["id"] or "")
        elif tag == "table":
            self._table = []
            self._tables.append(self._table)
            key = a.get("id") or f"_{a.get('class')}_{sum(k.startswith('_') for k in self.tables)}"
            self._id.append(key)
            self.tables.setdefault(key, self._table)
            self.classes.setdefault(key, [])
            self.row_data.setdefault(key, [])
            self.values.setdefault(key, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
            self.classes[self._id[-1]].append([])
            self.row_data[self._id[-1]].append({k[5:]: v or "" for k, v in attrs if k.startswith("data-")})
            self.values[self._id[-1]].append([])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self.classes[self._id[-1]][-1].append(a.get("class") or "")
            self.values[self._id[-1]][-1].append(a.get("data-value"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._tables.pop()
            self._id.pop()
            self._table = self._tables[-1] if self._tables else None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _figures(page: _Page) -> list[str]:
    """The page's images but the index's thumbnails."""
    return [src for src, alt in zip(page.images, page.alts, strict=True) if not alt.startswith("thumbnail:")]


SPLITS = ("all", "covered", "uncovered")
CURVES = ("deletion-black", "insertion-black", "deletion-blur", "insertion-blur")


def _shown(key: str, value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{3 if key == 'rank-agreement' else 2}f}"


def _best_rows(values: dict[int, float | None], key: str) -> set[int]:
    """Which rows hold the best of a column (as shown), computed here from the summary's numbers."""
    from repint.scoring import HIGHER_IS_BETTER

    shown = {i: float(_shown(key, v)) for i, v in values.items() if _shown(key, v) != "–"}
    if len(shown) < 2:
        return set()
    best = (max if HIGHER_IS_BETTER[key.split("@")[0]] else min)(shown.values())
    return {i for i, v in shown.items() if v == best}


def check_faithfulness(page: _Page, summary: dict[str, Any]) -> None:
    """The split table, the curves and the per-class table carry ``summary``'s numbers."""
    methods, runs = summary["methods"], int(summary.get("runs", 1))
    head, *rows = page.tables["scores"]
    keys = [h.rsplit(" ", 1)[0] for h in head[2:]]
    assert head[:2] == ["Method", "Split"] and keys == list(methods["RI"]["metrics"])
    assert {"mAD", "mAI", "AD@10", "deletion-blur", "insertion-blur", "ROAD-keep@20", "rank-agreement"} <= set(keys)
    assert [h[-1] for h in head[2:]] == ["↑" if k in ("mAI", "rank-agreement") or k.startswith(("AI@", "insertion",
                                         "ROAD-remove")) else "↓" for k in keys]
    # one row per method x split, in order, each cell the summary's value (± the study's std)
    assert [(d["method"], d["split"]) for d in page.row_data["scores"][1:]] == [(m, s) for m in methods for s in SPLITS]
    n = {m: r["n"] for m, r in methods.items()}
    for row, d in zip(rows, page.row_data["scores"][1:], strict=True):
        r = methods[d["method"]]
        count = {"all": n[d["method"]], "covered": r["n_covered"], "uncovered": n[d["method"]] - r["n_covered"]}
        shown = f"{count[d['split']]:.0f}" if d["split"] == "all" or runs == 1 else f"{count[d['split']]:.1f}"
        assert row[:2] == [d["method"], f"{d['split']} ({shown})"]  # a study's mean count of covered images
        for key, cell in zip(keys, row[2:], strict=True):
            text = _shown(key, r["metrics"][key][d["split"]])
            if runs > 1 and text != "–":
                text += " ± " + _shown(key, r["metrics_std"][key][d["split"]])
            assert cell == text, (d, key)
    # the best of each column within each split is bold, and only it
    bold = page.classes["scores"][1:]
    for split in SPLITS:
        at = [i for i, d in enumerate(page.row_data["scores"][1:]) if d["split"] == split]
        for j, key in enumerate(keys):
            best = _best_rows({i: methods[page.row_data["scores"][1 + i]["method"]]["metrics"][key][split]
                               for i in at}, key)
            assert {i for i in at if "best" in bold[i][2 + j].split()} == best, (split, key)
            if split == "all":
                assert best  # every method has every metric on all images
    # the deletion / insertion curves: one decodable small PNG per kind, plotting curves whose area is the score
    kinds = [k for k in CURVES if k in methods["RI"]["curves"]]
    assert kinds == list(CURVES)
    curves = [src for src, alt in zip(page.images, page.alts, strict=True) if alt.endswith(" curves")]
    assert [alt for alt in page.alts if alt.endswith(" curves")] == [f"{k} curves" for k in kinds]
    for src in curves:
        with Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True))) as im:
            assert im.format == "PNG" and im.size == (320, 240)
            grey = np.asarray(im.convert("L"), dtype=np.float32)
            assert grey.var() > 0 and (grey < 128).mean() > 0.01  # axes, lines and legend drawn
    for r in methods.values():
        for k in kinds:
            y = np.asarray(r["curves"][k])
            assert len(y) > 2 and np.all((y >= 0) & (y <= 1))
            area = 100 * float(np.sum((y[1:] + y[:-1]) / 2) / (len(y) - 1))
            assert area == pytest.approx(r["metrics"][k]["all"], abs=0.05)  # the legend's AUC is the curve's
    # per predicted class: one row per class x method with the summary's per-class values
    head, *rows = page.tables["per-class"]
    keys = [h.rsplit(" ", 1)[0] for h in head[2:]]
    assert keys == ["mAD", "deletion-blur", "insertion-blur", "ROAD-keep@20"]
    classes = sorted(methods["RI"]["per_class"], key=lambda c: (len(c), c))
    data = page.row_data["per-class"][1:]
    assert [(d["class"], d["method"]) for d in data] == [(c, m) for c in classes for m in methods]
    for row, d in zip(rows, data, strict=True):
        vals = methods[d["method"]]["per_class"][d["class"]]
        assert row[1:] == [d["method"], *(_shown(k, vals[k]) for k in keys)]
    # the interpretations and the distinct polytopes they make
    text = " ".join(" ".join(page.text).split())
    assert f"{summary['n_interpretations']} interpretations ({summary['n_distinct_polytopes']} distinct polytopes)" \
        in text
    assert 1 <= summary["n_distinct_polytopes"] <= summary["n_interpretations"]


def html_report(specs: list[Any], summary: dict[str, Any], out_dir: str) -> Path:
    """The task in a flow run of its own, as it runs after ``write_study`` in the ``study`` flow."""
    from prefect import flow

    from repint.tasks.html import write_html_report

    @flow(name="html-report-test")
    def run(specs: list[Any], summary: dict[str, Any], out_dir: str) -> str:
        return write_html_report(specs, summary, out_dir)

    return Path(run(specs, summary, out_dir))


@pytest.fixture(scope="module")
def report(prefect_harness, repint_cache, tmp_path_factory) -> tuple[Path, Path, dict[str, Any], Any]:
    from repint.flows import study
    from repint.flows.spec import build_spec

    out = tmp_path_factory.mktemp("report")
    cfg = tiny_config(120, 1, 16)
    cfg.evaluation.case_studies = 2
    spec = build_spec(cfg, out)
    summary = study(spec, runs=1)
    # a case study as the case-study task leaves it: embedded too
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (32, 1))).save(out / "case-study-probe.png")
    path = html_report([spec], summary, str(out))
    return out, path, summary, spec


def test_page_carries_the_results_and_embeds_every_figure(report):
    out, path, summary, _ = report
    assert path == out / "report.html"
    html = path.read_text(encoding="utf-8")
    page = _Page.of(path)
    on_disk = json.loads((out / "summary.json").read_text())

    rows = {r[1]: r for r in page.tables["results"][1:]}
    assert set(rows) == set(on_disk["methods"])
    for method, r in on_disk["methods"].items():
        assert rows[method][2] == f"{r['mAD']:.2f}" and rows[method][3] == f"{r['mAI']:.2f}"
        assert rows[method][4] == str(r["runs"]) and rows[method][5] == str(r["n"])
    assert rows["RI"][6].startswith(f"{on_disk['methods']['RI']['covered_unseen']:.0f} / {on_disk['n_unseen']} ")
    poly = {r[0]: r[1] for r in page.tables["polytopes"]}
    assert poly["mean size |P| (boundaries)"] == f"{on_disk['polytopes']['mean_size']:.2f}"
    check_faithfulness(page, on_disk)

    # galleries: the most covering interpretations of the store, with the scores stored for their reuse
    store = FeatureStore(str(out / "store.zarr"), mode="r")
    n_cov = store.read("polytopes/n_covered")
    assert page.sections == [f"interpretation-{c}" for c in np.argsort(-n_cov, kind="stable")[:2]]
    ids = list(store.read("unseen/ids"))
    y, y_masked = store.read("evaluation/RI/y"), store.read("evaluation/RI/y_masked")
    reused = [t for k, t in page.tables.items() if k.startswith("_reused")]
    assert reused and all(1 < len(t) <= 7 for t in reused)
    for table in reused:
        for row in table[1:]:
            i = ids.index(row[0])
            assert row[3] == f"{y[i]:.4f}" and row[4] == f"{y_masked[i]:.4f}"
    params = {r[0]: r[1] for r in page.tables["parameters"]}
    assert params["checkpoint sha256"] == store.attrs["model"]["checkpoint_sha256"]
    assert params["layer (ψ)"] == on_disk["layer"] and params["|Q|"] == str(on_disk["q"])
    assert store.attrs["store_id"] in {r[3] for r in page.tables["runs"]}

    # every image is an embedded PNG that decodes: 2 per gallery + every case study in the folder + 4 curves,
    # and the index's thumbnail of each interpretation's input
    assert len(_figures(page)) == 2 * 2 + len(list(out.glob("case-study-*.png"))) + len(CURVES)
    assert len(page.images) - len(_figures(page)) == store.shape("centres/input_index")[0]
    for src in page.images:
        assert src.startswith(DATA_PNG)
        with Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True))) as im:
            assert im.format == "PNG" and min(im.size) > 0
            im.verify()
    # nothing on the network: no remote src/href, no CSS url()/@import
    assert not [u for u in page.links if re.match(r"\s*(https?:)?//", u, re.I)]
    assert "url(" not in html and "@import" not in html
    assert re.findall(r"<script\b[^>]*>", html) == ["<script>"]  # the index's sorting, inline: no src


def test_prefect_artifacts_link_the_page_and_its_table(report):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, path, _, _ = report
    with get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["repint-report"])))
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["repint-report-table"])))
    assert any(path.resolve().as_uri() in str(a.data) for a in links)
    assert tables and "RI" in str(tables[-1].data)


def test_a_study_of_several_runs_shows_mean_std_and_each_run(report, tmp_path):
    out, _, summary, spec = report
    # two runs that share run 0's store, each with its own folder and summary.json
    specs = [spec.model_copy(update={"out_dir": str(tmp_path / f"run-{i}")}) for i in range(2)]
    for i, s in enumerate(specs):
        Path(s.out_dir).mkdir()
        (Path(s.out_dir) / "summary.json").write_text(json.dumps({"timings_s": {"ingest": 1.0 + i, "total": 9.0}}))
    for fig in out.glob("interpretation-*.png"):  # the report task's figures of run 0
        (Path(specs[0].out_dir) / fig.name).write_bytes(fig.read_bytes())
    (Path(specs[1].out_dir) / "case-study-9.png").write_bytes((out / "case-study-probe.png").read_bytes())
    methods = {m: {**r, "mAD_std": 1.5, "mAI_std": 0.25, "runs": 2,
                   "per_run": [{"mAD": r["mAD"] - 1, "mAI": r["mAI"]}, {"mAD": r["mAD"] + 1, "mAI": r["mAI"]}],
                   "metrics_std": {k: {s: 0.5 + i for s in SPLITS} for i, k in enumerate(r["metrics"])}}
               for m, r in summary["methods"].items()}
    study = {**summary, "methods": methods, "runs": 2, "seeds": [0, 1]}
    page = _Page.of(html_report(specs, study, str(tmp_path)))
    check_faithfulness(page, study)
    assert page.tables["scores"][1][2] == f"{methods['RI']['metrics']['mAD']['all']:.2f} ± 0.50"
    rows = {r[1]: r for r in page.tables["results"][1:]}
    for method, r in methods.items():
        assert rows[method][2] == f"{r['mAD']:.2f} ± 1.50" and rows[method][3] == f"{r['mAI']:.2f} ± 0.25"
        assert rows[method][4] == "2"
    per_run = {r[0]: r[1:] for r in page.tables["per-run"][1:]}
    assert per_run["RI"][1] == f"{methods['RI']['mAD'] + 1:.2f} / {methods['RI']['mAI']:.2f}"
    assert page.tables["run-timings"][1:] == [["0", "1.0", "9.0"], ["1", "2.0", "9.0"]]
    assert len(_figures(page)) == 2 * 2 + 1 + len(CURVES)  # the galleries of run 0, run 1's case study, the curves


def test_a_summary_without_the_scores_leaves_their_sections_out(report, tmp_path):
    """An old summary (mAD / mAI only) and one of ``evaluation.metrics: []`` (AD / AI split, no curves)."""
    _, _, summary, spec = report
    old = {k: v for k, v in summary.items() if k != "n_distinct_polytopes"}
    old["methods"] = {m: {k: v for k, v in r.items() if k not in ("metrics", "metrics_std", "per_class", "curves",
                                                                    "n_covered")}
                      for m, r in summary["methods"].items()}
    stale = tmp_path / "old" / "interpretations" / "interpretation-999.html"  # a centre of an earlier store
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    page = _Page.of(html_report([spec], old, str(tmp_path / "old")))
    assert not stale.exists() and len(list(stale.parent.glob("*.html"))) == len(page.tables["interpretation-index"]) - 1
    assert {"results", "polytopes", "parameters"} <= set(page.tables)
    assert not {"scores", "per-class"} & set(page.tables)
    case_studies = len(list(Path(spec.out_dir).glob("case-study-*.png")))  # the run's, embedded as before
    assert not [a for a in page.alts if a.endswith(" curves")] and len(_figures(page)) == 2 * 2 + case_studies
    text = " ".join(" ".join(page.text).split())
    assert f"{summary['n_interpretations']} interpretations, |Q|" in text and "distinct polytopes" not in text
    html = (tmp_path / "old" / "report.html").read_text(encoding="utf-8")
    assert "Faithfulness, split by coverage" not in html and "Deletion and insertion curves" not in html

    bare = {**summary, "methods": {m: {**r, "metrics": {k: r["metrics"][k] for k in ("mAD", "mAI")},
                                       "metrics_std": {k: r["metrics_std"][k] for k in ("mAD", "mAI")},
                                       "per_class": {c: {"mAD": v["mAD"], "mAI": v["mAI"]}
                                                     for c, v in r["per_class"].items()}, "curves": {}}
                                   for m, r in summary["methods"].items()}}
    page = _Page.of(html_report([spec], bare, str(tmp_path / "bare")))
    assert page.tables["scores"][0] == ["Method", "Split", "mAD ↓", "mAI ↑"]
    assert len(page.tables["scores"]) == 1 + 3 * len(summary["methods"])
    assert page.tables["per-class"][0] == ["Class", "Method", "mAD ↓"]
    assert not [a for a in page.alts if a.endswith(" curves")] and 'id="curves"' not in \
        (tmp_path / "bare" / "report.html").read_text(encoding="utf-8")


def test_results_rows_of_a_study_show_mean_and_std():
    from repint.tasks.html import results_rows

    summary = {"n_unseen": 50, "methods": {
        "RI": {"mAD": 10.0, "mAD_std": 1.234, "mAI": 40.0, "mAI_std": 0.5, "runs": 3, "n": 50,
               "covered_unseen": 45.0, "covered_unseen_std": 1.0},
        "Grad-CAM": {"mAD": 12.0, "mAI": 30.0, "n": 50}}}
    ri, cam = results_rows(summary)
    assert (ri["mAD (%)"], ri["mAI (%)"], ri["covered unseen"]) == ("10.00 ± 1.23", "40.00 ± 0.50",
                                                                   "45.0 ± 1.0 / 50 (90.0%)")
    assert (cam["mAD (%)"], cam["runs"], cam["covered unseen"]) == ("12.00", 1, "")


# -- the index of every interpretation and their pages -----------------------------------------------------


def _mad_by_hand(store: FeatureStore, method: str, v: int) -> str:
    """``method``'s mAD on the unseen images it reused interpretation ``v`` on, as the index shows it."""
    centre = store.read(f"evaluation/{method}/centre")
    y, y_masked = store.read(f"evaluation/{method}/y"), store.read(f"evaluation/{method}/y_masked")
    drops = [100 * max(0.0, float(y[i]) - float(y_masked[i])) / float(y[i]) for i in np.flatnonzero(centre == v)]
    return f"{sum(drops) / len(drops):.2f}" if drops else ""


def _png(src: str) -> tuple[int, int]:
    assert src.startswith(DATA_PNG)
    with Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True))) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


def test_index_lists_every_interpretation_with_the_stores_numbers(report):
    from repint.tasks.htmlindex import INDEX_THUMB_PX

    out, path, _, spec = report
    page = _Page.of(path)
    store = FeatureStore(str(out / "store.zarr"), mode="r")
    n = store.shape("centres/input_index")[0]
    methods = list(spec.evaluation.methods)
    head, *rows = page.tables["interpretation-index"]
    assert head == ["input", "id", "class", "|P|", "coverage", "purity", "reused on", "of them covered",
                    *(f"mAD {m}" for m in methods)]
    # every interpretation, once, in id order (the page without its script)
    assert n >= 10 and len(rows) == n and [r[1] for r in rows] == [str(v) for v in range(n)]
    assert [d["centre"] for d in page.row_data["interpretation-index"][1:]] == [str(v) for v in range(n)]
    size, n_cov = store.read("polytopes/size"), store.read("polytopes/n_covered")
    purity, cls = store.read("polytopes/purity"), store.read("centres/predicted_class")
    ri, covered = store.read("evaluation/RI/centre"), store.read("evaluation/RI/covered")
    for v, row in enumerate(rows):
        assert row[2:6] == [str(cls[v]), str(size[v]), str(n_cov[v]), f"{purity[v]:.3f}"]  # digits: names are ids
        assert row[6:8] == [str(int((ri == v).sum())), str(int(((ri == v) & covered).sum()))]
        assert row[8:] == [_mad_by_hand(store, m, v) for m in methods]
    assert sum(int(r[6]) for r in rows) == store.shape("unseen/ids")[0]  # each unseen image reuses one
    assert any(r[8] for r in rows) and any(r[9] for r in rows)
    # the numbers sort by their raw values; a tiny thumbnail of each input, and nothing else per row
    values = page.values["interpretation-index"][1:]
    assert all(float(vals[3]) == size[v] and float(vals[6]) == (ri == v).sum() for v, vals in enumerate(values))
    thumbs = [src for src, alt in zip(page.images, page.alts, strict=True) if alt.startswith("thumbnail:")]
    assert len(thumbs) == n and all(max(_png(src)) <= INDEX_THUMB_PX for src in thumbs)


def test_every_row_links_a_page_of_its_own_with_embedded_thumbnails(report):
    from repint.ranking import rank_similar
    from repint.tasks.htmlindex import INPUT_PX, MAX_REUSED_PAGE, TOP_SIMILAR

    out, path, _, spec = report
    html = path.read_text(encoding="utf-8")
    store = FeatureStore(str(out / "store.zarr"), mode="r")
    n = store.shape("centres/input_index")[0]
    links = {int(v): href for v, href in re.findall(r'<tr id="index-(\d+)"[^>]*>.*?<a href="([^"]+)"', html, re.S)}
    assert sorted(links) == list(range(n)) and 'id="interpretations"' in html
    assert sorted(p.name for p in (out / "interpretations").glob("*")) == \
        sorted(f"interpretation-{v}.html" for v in range(n))
    ref_ids, inputs = store.read("reference/ids"), store.read("centres/input_index")
    unseen_ids = list(store.read("unseen/ids"))
    ri, covered = store.read("evaluation/RI/centre"), store.read("evaluation/RI/covered")
    y, y_masked = store.read("evaluation/RI/y"), store.read("evaluation/RI/y_masked")
    total = path.stat().st_size
    for v, href in links.items():
        target = path.parent / href
        assert href == f"interpretations/interpretation-{v}.html" and target.is_file()
        total += target.stat().st_size
        text = target.read_text(encoding="utf-8")
        sub = _Page.of(target)
        words = " ".join(" ".join(sub.text).split())
        assert f"Interpretation {v}: class {store.read('centres/predicted_class')[v]}" in words
        assert str(ref_ids[inputs[v]]) in words
        # relative links only, each to a file that exists: back to the index, to the neighbouring pages
        assert "../report.html#interpretations" in sub.links
        for link in sub.links:
            if not link.startswith("data:"):
                assert not re.match(r"\s*(https?:)?//", link) and (target.parent / link.split("#")[0]).is_file()
        # every image embedded, decodable and small: the input and its RI map, Eq. 6's images and their maps,
        # and per reused unseen image the image, its map and the masked image
        # Eq. 6 in memory over the whole cover (the pages' one chunked pass must give the same images)
        cover = np.flatnonzero(store.read("polytopes/covered", v))
        cover = cover[cover != inputs[v]]
        ids = store.read("polytopes/boundaries", v)
        W = store.read_rows("boundaries/W", ids[ids >= 0])
        near = cover[rank_similar(W, store.read("reference/features", inputs[v]), store.read_rows(
            "reference/features", cover), unit=spec.interpretation.unit_normals)[:TOP_SIMILAR]] if len(W) \
            else cover[:TOP_SIMILAR]
        n_reused = min(int((ri == v).sum()), MAX_REUSED_PAGE)
        assert len(sub.images) == 2 + 2 * len(near) + 3 * n_reused
        assert all(max(_png(src)) <= INPUT_PX for src in sub.images)
        assert [int(i) for i in re.findall(r'<figure data-index="(\d+)">', text)] == near.tolist()
        # the unseen images RI reused it on, covered ones first, with their stored scores
        if n_reused:
            shown = [unseen_ids.index(r[0]) for r in sub.tables["reused-on"][1:]]
            mine = np.flatnonzero(ri == v)
            assert len(shown) == n_reused and all(ri[i] == v for i in shown)
            assert sum(covered[i] for i in shown) == min(n_reused, int(covered[mine].sum()))
            for row, i in zip(sub.tables["reused-on"][1:], shown, strict=True):
                assert row[2] == ("yes" if covered[i] else "no")
                assert row[6:8] == [f"{y[i]:.4f}", f"{y_masked[i]:.4f}"]
        else:
            assert "reused-on" not in sub.tables
        assert target.stat().st_size < 100_000
    assert total < path.stat().st_size + n * 100_000


# -- a real browser -------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class _DevTools:
    """Headless Chromium driven over the DevTools protocol: navigate, collect console errors, screenshot."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self.ws: Any = None
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one names a dead port
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1200,2000", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._connect(profile / "DevToolsActivePort", log)
        except BaseException:
            self.close()
            raise

    def _connect(self, port_file: Path, log: Path, timeout: float = 60) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not open its DevTools endpoint; see {log}")
            try:
                port = int(port_file.read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                    target = next(t for t in json.loads(r.read()) if t["type"] == "page")
                break
            except (OSError, ValueError, IndexError, StopIteration):
                time.sleep(0.1)
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.events: list[dict[str, Any]] = []
        self._id = 0
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1200, height=2000, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url: str, timeout: float = 60) -> list[str]:
        """Load ``url``; the console errors, uncaught exceptions and failed loads it caused."""
        start = len(self.events)
        failed = self.call("Page.navigate", url=url).get("errorText")
        if failed:
            return [f"navigation: {failed}"]
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        self.call("Runtime.evaluate", expression="1", awaitPromise=True)  # drain what the load left queued
        return [_error(e) for e in self.events[start:] if _error(e)]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the browser we started and its own child processes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _error(event: dict[str, Any]) -> str:
    m, p = event.get("method"), event.get("params", {})
    if m == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        return "uncaught: " + str(d.get("exception", {}).get("description") or d.get("text"))
    if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
    if m == "Log.entryAdded" and p["entry"].get("level") == "error":
        return f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip()
    return ""


def test_page_renders_in_headless_chromium(request, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium)")
    _, path, summary, _ = request.getfixturevalue("report")
    browser = _DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        # the probe proves that errors are seen at all
        probe = browser.open("data:text/html,<script>console.error('repint-probe')</script>"
                             "<script>throw new Error('repint-probe')</script>")
        assert any("repint-probe" in e and e.startswith("console") for e in probe), probe
        assert any("repint-probe" in e and e.startswith("uncaught") for e in probe), probe

        errors = browser.open(path.resolve().as_uri())
        assert errors == []
        assert browser.evaluate("document.title").startswith("RepInt report")
        images = browser.evaluate("JSON.stringify(Array.from(document.images)"
                                  ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]))")
        images = json.loads(images)
        assert len(images) == len(_Page.of(path).images) and all(ok and w > 0 and h > 0 for ok, w, h in images)
        assert browser.evaluate("document.querySelectorAll('#results tbody tr').length") == len(summary["methods"])
        assert browser.evaluate("document.querySelectorAll('#scores tbody tr').length") == 3 * len(summary["methods"])
        assert json.loads(browser.evaluate("JSON.stringify(Array.from(document.querySelectorAll('#curves img'))"
                                           ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]))")) == \
            [[True, 320, 240]] * 4
        weights = json.loads(browser.evaluate(
            "JSON.stringify(Array.from(document.querySelectorAll('#scores td'))"
            ".map(c => [c.classList.contains('best'), getComputedStyle(c).fontWeight]))"))
        assert any(b for b, _ in weights) and all((int(w) >= 700) == b for b, w in weights)
        shot = tmp_path / "report.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1200)
    assert pixels.var() > 0 and (pixels < 200).mean() > 0.001  # text, tables, figures: not a blank page


_ORDER = "JSON.stringify(Array.from(document.querySelectorAll('#interpretation-index tbody tr'))" \
         ".map(r => Number(r.dataset.centre)))"
_STATE = "JSON.stringify(Object.fromEntries(Array.from(" \
         "document.querySelectorAll('#interpretation-index th[data-key]'))" \
         ".map(th => [th.dataset.key, [th.getAttribute('aria-sort'), th.querySelector('.sort-indicator')" \
         ".textContent.trim()]])))"


def _click_header(browser: _DevTools, key: str) -> None:
    """A real mouse click (pressed, released) on the middle of column ``key``'s header button."""
    x, y = json.loads(browser.evaluate(
        f"(() => {{ const b = document.querySelector('#interpretation-index th[data-key=\"{key}\"] button');"
        " b.scrollIntoView({block: 'center'}); const r = b.getBoundingClientRect();"
        " return JSON.stringify([r.left + r.width / 2, r.top + r.height / 2]); })()"))
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def test_index_sorts_by_a_clicked_header_in_headless_chromium(request, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium)")
    _, path, _, spec = request.getfixturevalue("report")
    page = _Page.of(path)
    head = page.tables["interpretation-index"][0]
    keys = ["id", "class", "size", "coverage", "purity", "reused", "reused-covered",
            *(f"mad-{m}" for m in spec.evaluation.methods)]
    col = {k: i + 1 for i, k in enumerate(keys)}  # column 0: the thumbnail, not sortable
    assert len(head) == len(keys) + 1
    cells = {int(d["centre"]): (r, vals) for d, r, vals in zip(page.row_data["interpretation-index"][1:],
                                                                 page.tables["interpretation-index"][1:],
                                                                 page.values["interpretation-index"][1:],
                                                                 strict=True)}

    def expected(key: str, desc: bool) -> list[int]:
        """The order the script should give: by value (text: as numbers where they are), then by id;
        blanks last either way."""
        def value(v: int) -> Any:
            text, raw = cells[v][0][col[key]], cells[v][1][col[key]]
            return float(raw) if raw is not None else (int(text) if text.isdigit() else text)
        full = [v for v in sorted(cells) if cells[v][0][col[key]] != ""]
        blank = [v for v in sorted(cells) if cells[v][0][col[key]] == ""]
        return sorted(full, key=value, reverse=desc) + blank

    browser = _DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        assert browser.open(path.resolve().as_uri()) == []
        assert json.loads(browser.evaluate(_ORDER)) == sorted(cells)
        assert set(json.loads(browser.evaluate(_STATE))) == set(keys)
        for key, desc in [("size", False), ("size", True), ("class", False), ("coverage", False),
                          (f"mad-{spec.evaluation.methods[1]}", False), (f"mad-{spec.evaluation.methods[1]}", True),
                          ("id", False), ("id", True)]:
            _click_header(browser, key)
            assert json.loads(browser.evaluate(_ORDER)) == expected(key, desc), (key, desc)
            state = json.loads(browser.evaluate(_STATE))
            assert state[key] == (["descending", "▼"] if desc else ["ascending", "▲"])
            assert all(s == ["none", ""] for k, s in state.items() if k != key)
        assert expected("size", False) != expected("size", True)  # the clicks reordered the rows
        first = json.loads(browser.evaluate(_ORDER))[0]  # rows keep their links while sorted
        assert browser.evaluate("document.querySelector('#interpretation-index tbody tr td:nth-child(2) a')"
                                ".getAttribute('href')") == f"interpretations/interpretation-{first}.html"
        # ?sort=-<column> sorts on load, as a link to a sorted index would
        assert browser.open(path.resolve().as_uri() + "?sort=-reused") == []
        assert json.loads(browser.evaluate(_ORDER)) == expected("reused", True)
        assert browser.evaluate("document.getElementById('interpretation-index').dataset.sorted") == "reused:desc"
        # an interpretation's page: no error, every thumbnail loaded, the back link to the index
        target = path.parent / f"interpretations/interpretation-{first}.html"
        assert browser.open(target.resolve().as_uri()) == []
        images = json.loads(browser.evaluate("JSON.stringify(Array.from(document.images)"
                                             ".map(i => [i.complete, i.naturalWidth, i.width]))"))
        assert images and all(ok and 0 < w <= width <= 96 for ok, w, width in images)
        assert browser.evaluate("document.getElementById('back').href") == \
            path.resolve().as_uri() + "#interpretations"
    finally:
        browser.close()
