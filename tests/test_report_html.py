"""report.html: a tiny study's page carries summary.json's numbers and the store's scores, embeds every
figure as a PNG data URI, reaches for nothing on the network, and renders in a real headless Chromium
with no console error (checked over the DevTools protocol; a screenshot is taken)."""

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
    """The parts of the page the test checks: every src/href, the images, the tables by id, the galleries."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.sections: list[str] = []
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._tables: list[list[list[str]]] = []

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
        elif tag == "section" and (a.get("id") or "").startswith("interpretation-"):
            self.sections.append(a["id"] or "")
        elif tag == "table":
            self._table = []
            self._tables.append(self._table)
            if a.get("id"):
                self.tables[a["id"] or ""] = self._table
            else:
                self.tables.setdefault(f"_{a.get('class')}_{len(self._tables)}", self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._tables.pop()
            self._table = self._tables[-1] if self._tables else None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


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

    # every image is an embedded PNG that decodes: 2 per gallery + every case study in the folder
    assert len(page.images) == 2 * 2 + len(list(out.glob("case-study-*.png")))
    for src in page.images:
        assert src.startswith(DATA_PNG)
        with Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True))) as im:
            assert im.format == "PNG" and min(im.size) > 0
            im.verify()
    # nothing on the network: no remote src/href, no CSS url()/@import
    assert not [u for u in page.links if re.match(r"\s*(https?:)?//", u, re.I)]
    assert "url(" not in html and "@import" not in html and "<script" not in html


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
                   "per_run": [{"mAD": r["mAD"] - 1, "mAI": r["mAI"]}, {"mAD": r["mAD"] + 1, "mAI": r["mAI"]}]}
               for m, r in summary["methods"].items()}
    page = _Page.of(html_report(specs, {**summary, "methods": methods, "runs": 2, "seeds": [0, 1]}, str(tmp_path)))
    rows = {r[1]: r for r in page.tables["results"][1:]}
    for method, r in methods.items():
        assert rows[method][2] == f"{r['mAD']:.2f} ± 1.50" and rows[method][3] == f"{r['mAI']:.2f} ± 0.25"
        assert rows[method][4] == "2"
    per_run = {r[0]: r[1:] for r in page.tables["per-run"][1:]}
    assert per_run["RI"][1] == f"{methods['RI']['mAD'] + 1:.2f} / {methods['RI']['mAI']:.2f}"
    assert page.tables["run-timings"][1:] == [["0", "1.0", "9.0"], ["1", "2.0", "9.0"]]
    assert len(page.images) == 2 * 2 + 1  # the galleries of run 0 and run 1's case study


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
        shot = tmp_path / "report.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1200)
    assert pixels.var() > 0 and (pixels < 200).mean() > 0.001  # text, tables, figures: not a blank page
