"""The results of an evaluation, per method, and their tables: one model, one renderer per format.

For an unseen image ``x`` of predicted class ``c`` and a method's heat map reused on it, let
``Y = softmax(f(x))_c`` and ``Y'`` the same for ``x`` masked to the map's top pixels (the keep
fraction). Over the ``n`` unseen images (``repint.metrics.AverageDropIncrease``)::

    mAD = 100 / n * sum_x max(0, Y - Y') / Y      (mean Average Drop, percent; lower is better)
    mAI = 100 / n * sum_x [Y < Y']                (mean Average Increase, percent; higher is better)

``covered_unseen`` counts the unseen images inside the polytope of the interpretation RI reused on
them (RI and its variants only). A study of ``k`` runs (different seeds) reports, per method, the mean
over the runs and the sample standard deviation ``sqrt(sum_j (v_j - mean)^2 / (k - 1))`` (``ddof=1``;
``0`` for one run).

The model: a ``MethodResult`` per method, ``Results`` the methods in order (the order of the run's
summary). The renderers: ``to_markdown`` (a run's table, or the study's Table 1 with its Datasets
column), ``to_text`` / ``text_report`` (the CLI), ``to_rows`` (dicts for Prefect table artifacts and the
HTML template). Every renderer draws its columns from ``VIEWS``: a column added there (a ``Column``:
its name and its cell) appears in every format that shows that view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["VIEWS", "Column", "MethodResult", "Results", "RunScore", "format_pm", "text_report", "to_markdown",
           "to_rows", "to_text"]

Metric = Literal["mAD", "mAI"]
StdShown = Literal["never", "always", "method", "study"]
"""When a mean is written with ``± std``: never; always; when the method has several runs; when the
results (the study) have several runs."""
RowsView = Literal["run", "study", "html", "html-table"]


def format_pm(mean: float, std: float | None, digits: int = 2) -> str:
    """``mean`` to ``digits`` decimals, with `` ± std`` unless ``std`` is None: ``12.35 ± 0.50``."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass(frozen=True)
class RunScore:
    """One run's mAD and mAI (percent) of a method."""

    mAD: float
    mAI: float


@dataclass(frozen=True)
class MethodResult:
    """One method's results: mAD / mAI (percent) over ``n`` unseen images, of one run or the mean of
    ``runs`` runs (then ``mAD_std`` / ``mAI_std`` are the sample std over the runs and ``per_run`` the
    runs' scores). ``None`` marks what was not recorded (a single run records no ``runs`` nor std).
    Values are kept as given (no rounding, no conversion), so ``to_dict`` gives back ``from_dict``'s input."""

    method: str
    mAD: float
    mAI: float
    mAD_std: float | None = None
    mAI_std: float | None = None
    runs: int | None = None
    n: int | None = None
    per_run: tuple[RunScore, ...] | None = None
    covered_unseen: float | None = None
    covered_unseen_std: float | None = None
    scores: Mapping[str, Mapping[str, float]] | None = None  # repint.scoring: metric -> split -> value (mean)
    scores_std: Mapping[str, Mapping[str, float]] | None = None
    per_class: Mapping[str, Mapping[str, float]] | None = None  # predicted class -> metric -> value (mean)
    n_covered: float | None = None  # unseen images RI's polytopes cover (the "covered" split)
    curves: Mapping[str, Sequence[float]] | None = None  # deletion/insertion: the mean curve per (mode-baseline)
    distinct_polytopes: float | None = None  # RI's methods: distinct covered sets among the |V| polytopes

    @property
    def n_runs(self) -> int:
        """How many runs these results are of (1 where not recorded)."""
        return int(self.runs if self.runs is not None else 1)

    def std(self, metric: Metric) -> float | None:
        """``mAD_std`` or ``mAI_std``."""
        return self.mAD_std if metric == "mAD" else self.mAI_std

    @classmethod
    def from_dict(cls, method: str, r: Mapping[str, Any]) -> MethodResult:
        """From a summary's ``methods[method]``: one run's (``summarise_evaluation``: mAD, mAI, n,
        covered_unseen) or a study's (``to_dict``). Unknown keys are ignored."""
        per_run = r.get("per_run")
        return cls(method=method, mAD=r["mAD"], mAI=r["mAI"], mAD_std=r.get("mAD_std"), mAI_std=r.get("mAI_std"),
                   runs=r.get("runs"), n=r.get("n"),
                   per_run=None if per_run is None else tuple(RunScore(p["mAD"], p["mAI"]) for p in per_run),
                   covered_unseen=r.get("covered_unseen"), covered_unseen_std=r.get("covered_unseen_std"),
                   scores=r.get("metrics"), scores_std=r.get("metrics_std"), per_class=r.get("per_class"),
                   n_covered=r.get("n_covered"), curves=r.get("curves"),
                   distinct_polytopes=r.get("distinct_polytopes"))

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` entry: mAD, mAD_std, mAI, mAI_std, runs, n, per_run, covered_unseen,
        covered_unseen_std in this order, leaving out what is ``None``."""
        d: dict[str, Any] = {"mAD": self.mAD, "mAD_std": self.mAD_std, "mAI": self.mAI, "mAI_std": self.mAI_std,
                             "runs": self.runs, "n": self.n,
                             "per_run": None if self.per_run is None else
                             [{"mAD": p.mAD, "mAI": p.mAI} for p in self.per_run],
                             "covered_unseen": self.covered_unseen, "covered_unseen_std": self.covered_unseen_std,
                             "metrics": self.scores, "metrics_std": self.scores_std, "per_class": self.per_class,
                             "n_covered": self.n_covered, "curves": self.curves,
                             "distinct_polytopes": self.distinct_polytopes}
        return {k: v for k, v in d.items() if v is not None}


def _mean_std(values: Sequence[Any], ddof: int) -> tuple[np.ndarray, float, float]:
    a = np.array(values)
    return a, float(a.mean()), float(a.std(ddof=ddof))


def _nested_mean_std(values: Sequence[Mapping[str, Mapping[str, float]] | None],
                     ddof: int) -> tuple[dict[str, dict[str, float]] | None, dict[str, dict[str, float]] | None]:
    """Mean and std over runs of ``outer -> inner -> value`` dicts (NaN-aware; None where a run lacks them)."""
    if not values or any(v is None for v in values):
        return None, None
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    for outer, inner in values[0].items():  # type: ignore[union-attr]
        mean[outer], std[outer] = {}, {}
        for key in inner:
            a = np.array([v.get(outer, {}).get(key, np.nan) for v in values], dtype=float)  # type: ignore[union-attr]
            ok = a[np.isfinite(a)]
            mean[outer][key] = float(ok.mean()) if len(ok) else float("nan")
            std[outer][key] = float(ok.std(ddof=ddof)) if len(ok) > ddof else 0.0
    return mean, std


def _mean_of(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))  # type: ignore[arg-type]


def _mean_curves(values: Sequence[Mapping[str, Sequence[float]] | None]) -> dict[str, list[float]] | None:
    """The runs' mean curves, point by point (None where a run lacks them)."""
    if not values or any(v is None for v in values):
        return None
    return {k: np.mean([v[k] for v in values], axis=0).round(5).tolist()  # type: ignore[index]
            for k in values[0] if all(k in v for v in values)}  # type: ignore[union-attr, operator]


@dataclass(frozen=True)
class Results:
    """The methods' results in order, of one run or a study of ``runs`` runs, on ``dataset``
    (``n_unseen`` unseen images, where known)."""

    methods: tuple[MethodResult, ...]
    dataset: str | None = None
    runs: int = 1
    n_unseen: int | None = None

    @property
    def names(self) -> list[str]:
        """The methods' names, in order."""
        return [m.method for m in self.methods]

    @classmethod
    def from_methods(cls, methods: Mapping[str, Mapping[str, Any]], dataset: str | None = None, runs: int = 1,
                     n_unseen: int | None = None) -> Results:
        """From a ``methods`` dict (method name -> its results, as in ``summary.json``)."""
        return cls(tuple(MethodResult.from_dict(m, r) for m, r in methods.items()), dataset, runs, n_unseen)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Results:
        """From a run's or a study's summary: its ``methods``, ``dataset``, ``runs`` (1 if absent), ``n_unseen``."""
        return cls.from_methods(summary["methods"], summary.get("dataset"), summary.get("runs", 1),
                                summary.get("n_unseen"))

    @classmethod
    def aggregate(cls, per_run: Sequence[Mapping[str, Mapping[str, Any]]], dataset: str | None = None,
                  n_unseen: int | None = None) -> Results:
        """The study of several runs' ``methods`` dicts: per method (those of the first run, in its order)
        the mean and sample std (``ddof=1``; ``0`` for one run) of mAD, mAI and covered_unseen (where the
        first run has it) over the runs, the runs' scores, and the first run's ``n``."""
        ddof = 1 if len(per_run) > 1 else 0
        out = []
        for method, first in per_run[0].items():
            ad, ad_mean, ad_std = _mean_std([r[method]["mAD"] for r in per_run], ddof)
            ai, ai_mean, ai_std = _mean_std([r[method]["mAI"] for r in per_run], ddof)
            cov_mean = cov_std = None
            if "covered_unseen" in first:
                _, cov_mean, cov_std = _mean_std([r[method]["covered_unseen"] for r in per_run], ddof)
            scores, scores_std = _nested_mean_std([r[method].get("metrics") for r in per_run], ddof)
            per_class, _ = _nested_mean_std([r[method].get("per_class") for r in per_run], ddof)
            n_cov = [r[method]["n_covered"] for r in per_run if "n_covered" in r[method]]
            out.append(MethodResult(
                method, ad_mean, ai_mean, ad_std, ai_std, runs=len(per_run), n=first.get("n"),
                per_run=tuple(RunScore(float(a), float(i)) for a, i in zip(ad, ai, strict=True)),
                covered_unseen=cov_mean, covered_unseen_std=cov_std, scores=scores, scores_std=scores_std,
                per_class=per_class, n_covered=float(np.mean(n_cov)) if n_cov else None,
                curves=_mean_curves([r[method].get("curves") for r in per_run]),
                distinct_polytopes=_mean_of([r[method].get("distinct_polytopes") for r in per_run])))
        return cls(tuple(out), dataset, len(per_run), n_unseen)

    def methods_dict(self) -> dict[str, dict[str, Any]]:
        """The ``methods`` of ``summary.json``: method name -> ``MethodResult.to_dict()``."""
        return {m.method: m.to_dict() for m in self.methods}


# -- columns ----------------------------------------------------------------------------------------------

Cell = Callable[[MethodResult, int, Results], Any]
"""A column's cell of the ``i``-th method: ``cell(result, i, results)``."""


@dataclass(frozen=True)
class Column:
    """A column of a results table: ``key`` is its header and its key in a row dict, ``cell`` its cell,
    ``width`` its width in plain text (the first column is aligned left, the others right)."""

    key: str
    cell: Cell
    width: Callable[[Results], int] | None = None
    optional: bool = False  # left out of plain text where no method has a value (summaries of before it)


def _name(m: MethodResult, i: int, res: Results) -> str:
    return m.method


def _dataset(m: MethodResult, i: int, res: Results) -> str:
    return f"{res.dataset if i == 0 else ''}"


def _mean(metric: Metric, shown: StdShown) -> Cell:
    """The metric to 2 decimals, with ± its std where ``shown`` says so (and there is one)."""

    def cell(m: MethodResult, i: int, res: Results) -> str:
        several = {"never": False, "always": True, "method": m.n_runs > 1, "study": res.runs > 1}[shown]
        return format_pm(getattr(m, metric), m.std(metric) if several else None)

    return cell


def _number(metric: Metric) -> Cell:
    """The metric as a float."""
    return lambda m, i, res: float(getattr(m, metric))


def _std_of_several(metric: Metric) -> Cell:
    """The metric's std where the method has several runs, else ``None``."""
    return lambda m, i, res: m.std(metric) if m.n_runs > 1 else None


def _value(field: str) -> Cell:
    """A field as recorded, ``""`` where it is not."""
    return lambda m, i, res: "" if getattr(m, field) is None else getattr(m, field)


def _runs(m: MethodResult, i: int, res: Results) -> int:
    return m.n_runs


def _covered_of_n(m: MethodResult, i: int, res: Results) -> str:
    """``45/50``: covered unseen images of the method's ``n`` (the CLI)."""
    return "" if m.covered_unseen is None else f"{m.covered_unseen:.0f}/{m.n}"


def _distinct(m: MethodResult, i: int, res: Results) -> str:
    """``10`` distinct polytopes (RI's methods; ``10.4`` as a mean over runs)."""
    d = m.distinct_polytopes
    return "" if d is None else (f"{d:.0f}" if float(d).is_integer() else f"{d:.1f}")


def _covered_share(m: MethodResult, i: int, res: Results) -> str:
    """``45 / 50 (90.0%)``, ``45.0 ± 1.0 / 50 (90.0%)`` for several runs (the HTML report)."""
    if m.covered_unseen is None:
        return ""
    cov, std = float(m.covered_unseen), m.covered_unseen_std
    text = f"{cov:.0f}" if m.n_runs == 1 or std is None else format_pm(cov, std, 1)
    return text + (f" / {res.n_unseen} ({100 * cov / res.n_unseen:.1f}%)" if res.n_unseen else "")


def _per_run(m: MethodResult, i: int, res: Results) -> list[dict[str, float]]:
    return [{"mAD": p.mAD, "mAI": p.mAI} for p in m.per_run or ()]


def _name_width(res: Results) -> int:
    return max([12, *(len(name) + 2 for name in res.names)])


def _mean_width(res: Results) -> int:
    return 16 if res.runs > 1 else 10


VIEWS: dict[str, tuple[Column, ...]] = {
    # markdown: a run's table (the repint-summary artifact), the study's Table 1 (repint-table-1-md)
    "run-markdown": (Column("method", _name), Column("mAD (%)", _mean("mAD", "never")),
                     Column("mAI (%)", _mean("mAI", "never"))),
    "table1-markdown": (Column("Datasets", _dataset), Column("Methods", _name),
                        Column("mAD (%)", _mean("mAD", "always")), Column("mAI (%)", _mean("mAI", "always"))),
    # plain text: the CLI's table
    "text": (Column("method", _name, _name_width), Column("mAD (%)", _mean("mAD", "study"), _mean_width),
             Column("mAI (%)", _mean("mAI", "study"), _mean_width),
             Column("covered unseen", _covered_of_n, lambda res: 16),
             Column("distinct polytopes", _distinct, lambda res: 20, optional=True)),
    # rows: a run's table artifact (repint-ad-ai), the study's (repint-table-1), the HTML template's rows
    # and the HTML report's table artifact (repint-report-table)
    "run": (Column("method", _name), Column("mAD (%)", _value("mAD")), Column("mAI (%)", _value("mAI")),
            Column("n", _value("n")), Column("covered unseen", _value("covered_unseen"))),
    "study": (Column("method", _name), Column("mAD (%)", _mean("mAD", "always")),
              Column("mAI (%)", _mean("mAI", "always")), Column("runs", _runs)),
    "html": (Column("method", _name), Column("mAD", _number("mAD")), Column("mAD_std", _std_of_several("mAD")),
             Column("mAI", _number("mAI")), Column("mAI_std", _std_of_several("mAI")), Column("runs", _runs),
             Column("n", _value("n")), Column("mAD (%)", _mean("mAD", "method")),
             Column("mAI (%)", _mean("mAI", "method")), Column("covered unseen", _covered_share),
             Column("per_run", _per_run)),
    "html-table": (Column("method", _name), Column("mAD (%)", _mean("mAD", "method")),
                   Column("mAI (%)", _mean("mAI", "method")), Column("runs", _runs), Column("n", _value("n")),
                   Column("covered unseen", _covered_share)),
}
"""Each format's columns, in order. ``to_rows`` renders the views ``run``, ``study``, ``html`` and
``html-table``; ``to_markdown`` ``run-markdown`` and ``table1-markdown``; ``to_text`` ``text``."""


# -- renderers --------------------------------------------------------------------------------------------


def _cells(results: Results, view: str) -> list[list[Any]]:
    return [[c.cell(m, i, results) for c in VIEWS[view]] for i, m in enumerate(results.methods)]


def to_rows(results: Results, view: RowsView = "html") -> list[dict[str, Any]]:
    """One dict per method (column key -> cell), for a Prefect table artifact or the HTML template:

    - ``run``: method, ``mAD (%)`` / ``mAI (%)`` as numbers, n, covered unseen (``""`` where not recorded);
    - ``study``: method, ``mAD (%)`` / ``mAI (%)`` as ``mean ± std`` strings, runs;
    - ``html``: the template's rows: method, mAD, mAD_std, mAI, mAI_std (std ``None`` for one run), runs,
      n, ``mAD (%)`` / ``mAI (%)`` (``± std`` for several runs), covered unseen (``45 / 50 (90.0%)``), per_run;
    - ``html-table``: the HTML report's table artifact, those of ``html`` a person reads."""
    keys = [c.key for c in VIEWS[view]]
    return [dict(zip(keys, row, strict=True)) for row in _cells(results, view)]


def to_markdown(results: Results, table1: bool = False) -> str:
    """A markdown table: ``| method | mAD (%) | mAI (%) |`` to 2 decimals (a run's), or with
    ``table1`` the paper's Table 1, ``| Datasets | Methods | mAD (%) | mAI (%) |`` with ``mean ± std``
    and the dataset on the first row only."""
    view = "table1-markdown" if table1 else "run-markdown"
    cols = VIEWS[view]
    lines = ["| " + " | ".join(c.key for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{cell}" for cell in row) + " |" for row in _cells(results, view)]
    return "\n".join(lines)


def to_text(results: Results) -> str:
    """The plain-text table: a header (with ``(k runs)`` for several), a rule, one line per method;
    ``mean ± std`` when the results are of several runs."""
    rows = _cells(results, "text")
    keep = [j for j, c in enumerate(VIEWS["text"]) if not c.optional or any(r[j] != "" for r in rows)]
    cols = [VIEWS["text"][j] for j in keep]
    rows = [[r[j] for j in keep] for r in rows]
    widths = [c.width(results) if c.width else len(c.key) for c in cols]

    def line(cells: Sequence[Any]) -> str:
        return "".join(f"{cell:{'<' if j == 0 else '>'}{w}}" for j, (cell, w) in enumerate(zip(cells, widths,
                                                                                                strict=True)))

    head = line([c.key for c in cols]) + (f"   ({results.runs} runs)" if results.runs > 1 else "")
    return "\n".join([head, "-" * sum(widths), *(line(row) for row in rows)])


def text_report(summary: Mapping[str, Any], out: str | None = None) -> str:
    """What ``repint demo`` / ``repint run`` print for a run's or a study's summary: the data line, the
    results table (``to_text``), the polytopes and the time, and where the output is (``out``, else the
    store's folder)."""
    from repint.scoretable import scores_text

    p = summary["polytopes"]
    results = Results.from_summary(summary)
    scores = scores_text(results)
    distinct = summary.get("n_distinct_polytopes")
    return "\n".join([
        f"RepInt on {summary['dataset']}: {summary['n_reference']} reference / {summary['n_unseen']} unseen "
        f"images, {summary['n_classes']} classes, {summary['n_interpretations']} interpretations"
        + (f" ({distinct:.0f} distinct polytopes)" if distinct is not None else "")
        + f", |Q| = {summary['q']} ({summary['q_sampling']})", "",
        to_text(results), "",
        *(["every metric on all unseen images, on those RI's polytopes cover, and on those that fall back "
           "(↓ lower is better, ↑ higher; docs/fidelity.md):", scores, ""] if scores else []),
        f"polytopes: mean size {p['mean_size']:.1f}, mean coverage {p['mean_covered']:.1f} reference "
        f"images, mean purity {p['mean_purity']:.3f}",
        f"time: {summary['timings_s'].get('total', float('nan')):.1f} s; "
        f"output in {out or Path(summary['store']).parent} (report.html)"])
