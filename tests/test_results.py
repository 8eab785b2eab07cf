"""repint.results: the results model (one run, a study's mean ± sample std) and its renderers, on
hand-built summaries with hand-computed numbers and the exact strings each format writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repint.results import VIEWS, Column, MethodResult, Results, text_report, to_markdown, to_rows, to_text

# one run, as summarise_evaluation leaves it: RI has covered_unseen, the others not
RUN = {"RI": {"mAD": 12.3456, "mAI": 40.0, "n": 50, "covered_unseen": 45},
       "Grad-CAM": {"mAD": 20.5, "mAI": 33.333, "n": 50}}

# three runs of three methods; mean and sample std (ddof=1) by hand:
#   RI        mAD 10, 12, 14 -> 12 ± 2     mAI 40, 50, 60 -> 50 ± 10   covered 44, 45, 46 -> 45 ± 1
#   Grad-CAM  mAD 20, 20, 23 -> 21 ± √3    mAI 30, 33, 36 -> 33 ± 3
#   Score-CAM mAD 5.5, 6.5, 7.5 -> 6.5 ± 1 mAI 1, 1, 1 -> 1 ± 0
THREE = [{"RI": {"mAD": ad, "mAI": ai, "n": 50, "covered_unseen": cov},
          "Grad-CAM": {"mAD": gad, "mAI": gai, "n": 50},
          "Score-CAM": {"mAD": sad, "mAI": 1.0, "n": 50}}
         for ad, ai, cov, gad, gai, sad in ((10.0, 40.0, 44, 20.0, 30.0, 5.5), (12.0, 50.0, 45, 20.0, 33.0, 6.5),
                                            (14.0, 60.0, 46, 23.0, 36.0, 7.5))]

SUMMARY = {"dataset": "digits", "n_reference": 200, "n_unseen": 50, "n_classes": 10, "n_interpretations": 20,
           "q": 16, "q_sampling": "uniform", "polytopes": {"mean_size": 3.14159, "mean_covered": 7.25,
                                                          "mean_purity": 0.9876},
           "timings_s": {"ingest": 1.0, "total": 12.345}, "store": "runs/demo/store.zarr"}


def test_one_run_from_its_methods():
    res = Results.from_summary({**SUMMARY, "methods": RUN})
    assert res.names == ["RI", "Grad-CAM"] and res.runs == 1 and res.dataset == "digits" and res.n_unseen == 50
    ri = res.methods[0]
    assert ri == MethodResult("RI", 12.3456, 40.0, n=50, covered_unseen=45)
    assert ri.n_runs == 1 and ri.mAD_std is None and ri.per_run is None
    assert res.methods_dict() == RUN  # values as given, nothing added


def test_three_runs_mean_and_sample_std():
    res = Results.aggregate(THREE, dataset="digits")
    assert res.names == ["RI", "Grad-CAM", "Score-CAM"] and res.runs == 3
    ri, cam, score = res.methods
    assert (ri.mAD, ri.mAD_std, ri.mAI, ri.mAI_std) == (12.0, 2.0, 50.0, 10.0)
    assert (ri.covered_unseen, ri.covered_unseen_std, ri.runs, ri.n) == (45.0, 1.0, 3, 50)
    assert (cam.mAD, cam.mAI, cam.mAI_std) == (21.0, 33.0, 3.0) and cam.mAD_std == pytest.approx(3 ** 0.5)
    assert cam.covered_unseen is None
    assert (score.mAD, score.mAD_std, score.mAI, score.mAI_std) == (6.5, 1.0, 1.0, 0.0)
    d = res.methods_dict()
    assert list(d["RI"]) == ["mAD", "mAD_std", "mAI", "mAI_std", "runs", "n", "per_run", "covered_unseen",
                             "covered_unseen_std"]
    assert list(d["Grad-CAM"]) == ["mAD", "mAD_std", "mAI", "mAI_std", "runs", "n", "per_run"]
    assert d["RI"]["per_run"] == [{"mAD": 10.0, "mAI": 40.0}, {"mAD": 12.0, "mAI": 50.0}, {"mAD": 14.0, "mAI": 60.0}]
    # summary.json round trip
    assert Results.from_methods(json.loads(json.dumps(d))).methods_dict() == d


def test_one_run_aggregated_has_std_zero():
    (ri, cam) = Results.aggregate([RUN]).methods
    assert (ri.mAD, ri.mAD_std, ri.mAI_std, ri.covered_unseen, ri.covered_unseen_std) == (12.3456, 0.0, 0.0, 45.0, 0.0)
    assert ri.runs == 1 and ri.per_run is not None and len(ri.per_run) == 1 and cam.mAD == 20.5


def test_markdown_of_a_run():
    assert to_markdown(Results.from_methods(RUN)) == (
        "| method | mAD (%) | mAI (%) |\n"
        "|---|---|---|\n"
        "| RI | 12.35 | 40.00 |\n"
        "| Grad-CAM | 20.50 | 33.33 |")


def test_markdown_table1_of_a_study():
    assert to_markdown(Results.aggregate(THREE, dataset="digits"), table1=True) == (
        "| Datasets | Methods | mAD (%) | mAI (%) |\n"
        "|---|---|---|---|\n"
        "| digits | RI | 12.00 ± 2.00 | 50.00 ± 10.00 |\n"
        "|  | Grad-CAM | 21.00 ± 1.73 | 33.00 ± 3.00 |\n"
        "|  | Score-CAM | 6.50 ± 1.00 | 1.00 ± 0.00 |")
    assert to_markdown(Results.aggregate([RUN], dataset="digits"), table1=True).splitlines()[2:] == [
        "| digits | RI | 12.35 ± 0.00 | 40.00 ± 0.00 |", "|  | Grad-CAM | 20.50 ± 0.00 | 33.33 ± 0.00 |"]


def test_text_of_a_run():
    assert to_text(Results.from_methods(RUN)) == "\n".join([
        "method" + " " * 9 + "mAD (%)   mAI (%)  covered unseen",  # widths 12, 10, 10, 16
        "-" * 48,
        "RI" + " " * 15 + "12.35     40.00" + " " * 11 + "45/50",
        "Grad-CAM" + " " * 9 + "20.50     33.33" + " " * 16])


def test_text_report_of_a_study_as_the_cli_prints_it():
    study = {**SUMMARY, "runs": 3, "methods": Results.aggregate(THREE).methods_dict()}
    assert text_report(study, "runs/out") == "\n".join([
        "RepInt on digits: 200 reference / 50 unseen images, 10 classes, 20 interpretations, |Q| = 16 (uniform)",
        "",
        "method" + " " * 15 + "mAD (%)" + " " * 9 + "mAI (%)  covered unseen   (3 runs)",  # widths 12, 16, 16, 16
        "-" * 60,
        "RI" + " " * 14 + "12.00 ± 2.00   50.00 ± 10.00" + " " * 11 + "45/50",
        "Grad-CAM" + " " * 8 + "21.00 ± 1.73    33.00 ± 3.00" + " " * 16,
        "Score-CAM" + " " * 8 + "6.50 ± 1.00     1.00 ± 0.00" + " " * 16,
        "",
        "polytopes: mean size 3.1, mean coverage 7.2 reference images, mean purity 0.988",
        "time: 12.3 s; output in runs/out (report.html)"])
    # no output folder: the store's; a long method name widens the first column
    run = {**SUMMARY, "methods": {"RI[q_sampling=boundary-search]": RUN["RI"]}}
    lines = text_report(run).splitlines()
    assert lines[-1] == "time: 12.3 s; output in runs/demo (report.html)"
    assert lines[2] == f"{'method':<32}   mAD (%)   mAI (%)  covered unseen" and lines[3] == "-" * 68
    assert lines[4] == "RI[q_sampling=boundary-search]       12.35     40.00           45/50"


def test_rows_of_a_run_for_its_artifact():
    assert to_rows(Results.from_methods(RUN), "run") == [
        {"method": "RI", "mAD (%)": 12.3456, "mAI (%)": 40.0, "n": 50, "covered unseen": 45},
        {"method": "Grad-CAM", "mAD (%)": 20.5, "mAI (%)": 33.333, "n": 50, "covered unseen": ""}]


def test_rows_of_a_study_for_its_artifact():
    assert to_rows(Results.aggregate(THREE), "study") == [
        {"method": "RI", "mAD (%)": "12.00 ± 2.00", "mAI (%)": "50.00 ± 10.00", "runs": 3},
        {"method": "Grad-CAM", "mAD (%)": "21.00 ± 1.73", "mAI (%)": "33.00 ± 3.00", "runs": 3},
        {"method": "Score-CAM", "mAD (%)": "6.50 ± 1.00", "mAI (%)": "1.00 ± 0.00", "runs": 3}]


def test_rows_for_the_html_report():
    one = to_rows(Results.from_summary({**SUMMARY, "methods": RUN}), "html")
    assert one[0] == {"method": "RI", "mAD": 12.3456, "mAD_std": None, "mAI": 40.0, "mAI_std": None, "runs": 1,
                      "n": 50, "mAD (%)": "12.35", "mAI (%)": "40.00", "covered unseen": "45 / 50 (90.0%)",
                      "per_run": []}
    assert one[1]["covered unseen"] == "" and one[1]["mAI (%)"] == "33.33"
    study = Results.from_summary({**SUMMARY, "runs": 3, "methods": Results.aggregate(THREE).methods_dict()})
    ri = to_rows(study, "html")[0]
    assert (ri["mAD (%)"], ri["mAI (%)"], ri["mAD_std"], ri["runs"]) == ("12.00 ± 2.00", "50.00 ± 10.00", 2.0, 3)
    assert ri["covered unseen"] == "45.0 ± 1.0 / 50 (90.0%)"
    assert ri["per_run"] == [{"mAD": 10.0, "mAI": 40.0}, {"mAD": 12.0, "mAI": 50.0}, {"mAD": 14.0, "mAI": 60.0}]
    assert to_rows(study, "html-table")[2] == {"method": "Score-CAM", "mAD (%)": "6.50 ± 1.00",
                                               "mAI (%)": "1.00 ± 0.00", "runs": 3, "n": 50, "covered unseen": ""}
    # no n_unseen in the summary: the count alone
    assert to_rows(Results.from_methods(RUN), "html")[0]["covered unseen"] == "45"


def test_a_column_added_to_a_view_appears_in_its_format(monkeypatch):
    monkeypatch.setitem(VIEWS, "run-markdown", (*VIEWS["run-markdown"], Column("n", lambda m, i, res: m.n)))
    assert to_markdown(Results.from_methods(RUN)).splitlines() == [
        "| method | mAD (%) | mAI (%) | n |", "|---|---|---|---|", "| RI | 12.35 | 40.00 | 50 |",
        "| Grad-CAM | 20.50 | 33.33 | 50 |"]


# -- properties -------------------------------------------------------------------------------------------

score = st.floats(0, 100, allow_nan=False)
names = st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9_\-\[\]=+]{0,24}", fullmatch=True), min_size=1, max_size=6,
                 unique=True)


@given(names, st.data(), st.integers(1, 8))
def test_k_identical_runs_have_std_zero_and_the_runs_mean(methods, data, k):
    run = {m: {"mAD": data.draw(score), "mAI": data.draw(score), "n": 7, "covered_unseen": data.draw(st.integers(0, 7))}
           for m in methods}
    res = Results.aggregate([run] * k)
    assert res.names == methods and res.runs == k
    for m in res.methods:
        r = run[m.method]
        assert m.mAD == pytest.approx(r["mAD"], rel=1e-12, abs=1e-12)
        assert m.mAI == pytest.approx(r["mAI"], rel=1e-12, abs=1e-12)
        assert m.covered_unseen == pytest.approx(r["covered_unseen"], rel=1e-12)
        assert abs(m.mAD_std) <= 1e-12 * max(1, r["mAD"]) and abs(m.mAI_std) <= 1e-12 * max(1, r["mAI"])
        assert m.covered_unseen_std == pytest.approx(0, abs=1e-12) and m.runs == k and m.n == 7
        assert len(m.per_run) == k and all(p.mAD == r["mAD"] and p.mAI == r["mAI"] for p in m.per_run)


@given(names, st.data(), st.integers(1, 4))
def test_every_format_lists_the_methods_in_order(methods, data, k):
    runs = [{m: {"mAD": data.draw(score), "mAI": data.draw(score), "n": 9} for m in methods} for _ in range(k)]
    res = Results.aggregate(runs, dataset="d")
    for view in ("run", "study", "html", "html-table"):
        assert [r["method"] for r in to_rows(res, view)] == methods
    assert [line.split(" | ")[0][2:] for line in to_markdown(res).splitlines()[2:]] == methods
    assert [line.split(" | ")[1] for line in to_markdown(res, table1=True).splitlines()[2:]] == methods
    assert [line.split()[0] for line in to_text(res).splitlines()[2:]] == methods
    assert Results.from_methods(res.methods_dict()) == res.__class__(res.methods)


def test_text_shows_distinct_polytopes_only_where_recorded():
    from repint.results import Results, to_text

    with_it = to_text(Results.from_methods({"RI": {"mAD": 1.0, "mAI": 2.0, "n": 8, "covered_unseen": 5,
                                                   "distinct_polytopes": 3},
                                            "Grad-CAM": {"mAD": 1.5, "mAI": 2.5, "n": 8}}))
    head, _, ri, cam = with_it.splitlines()
    assert head.endswith("distinct polytopes") and ri.endswith(" 3") and cam.strip().endswith("2.50")
    assert "distinct" not in to_text(Results.from_methods({"RI": {"mAD": 1.0, "mAI": 2.0}}))
