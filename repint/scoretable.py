"""The tables of every metric split by RI's coverage (:mod:`repint.scoring`): one row per method and
split (all, covered, uncovered), one column per metric, with the direction that is better; and the
per-class table. Rendered as plain text (the CLI), markdown (artifacts, ``docs/fidelity.md``) and rows
(the HTML report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from repint.results import MethodResult, Results
from repint.scoring import HIGHER_IS_BETTER, SPLITS

__all__ = ["HEADLINE", "direction", "per_class_markdown", "score_keys", "score_rows", "scores_markdown",
           "scores_text"]

#: the metrics the CLI shows (those a run has, in this order); the markdown and HTML show all
HEADLINE = ("mAD", "mAI", "AD@10", "AD@50", "deletion-blur", "insertion-blur", "ROAD-keep@20", "ROAD-remove@20",
            "rank-agreement")


def direction(key: str) -> str:
    """``↓`` where lower is better, ``↑`` where higher is."""
    return "↑" if HIGHER_IS_BETTER.get(key.split("@")[0], True) else "↓"


def score_keys(results: Results, keys: Sequence[str] | None = None) -> list[str]:
    """The metrics recorded for the results' methods (in the first's order), or those of ``keys`` they have."""
    have: list[str] = []
    for m in results.methods:
        have += [k for k in (m.scores or {}) if k not in have]
    return have if keys is None else [k for k in keys if k in have]


def _cell(m: MethodResult, key: str, split: str, digits: int, std: bool) -> str:
    value = (m.scores or {}).get(key, {}).get(split)
    if value is None or not np.isfinite(value):
        return "–"
    if key == "rank-agreement":
        digits = 3
    text = f"{value:.{digits}f}"
    s = (m.scores_std or {}).get(key, {}).get(split)
    return text + (f" ± {s:.{digits}f}" if std and s is not None and m.n_runs > 1 else "")


def _split_name(m: MethodResult, split: str, n: int | None) -> str:
    if split == "all" or m.n_covered is None or n is None:
        return split + (f" ({n})" if split == "all" and n else "")
    cov = float(m.n_covered)
    count = cov if split == "covered" else n - cov
    return f"{split} ({count:.0f})" if m.n_runs == 1 else f"{split} ({count:.1f})"


def score_rows(results: Results, keys: Sequence[str] | None = None, splits: Sequence[str] = SPLITS,
               digits: int = 2, std: bool = True) -> list[dict[str, Any]]:
    """One dict per (method, split): ``method``, ``split`` and a cell per metric (``mean ± std``)."""
    cols = score_keys(results, keys)
    rows = []
    for m in results.methods:
        if not m.scores:
            continue
        for split in splits:
            rows.append({"method": m.method, "split": _split_name(m, split, m.n or results.n_unseen),
                         **{f"{k} {direction(k)}": _cell(m, k, split, digits, std) for k in cols}})
    return rows


def scores_markdown(results: Results, keys: Sequence[str] | None = None, splits: Sequence[str] = SPLITS) -> str:
    """Every metric (or ``keys``) per method and coverage split, as a markdown table."""
    rows = score_rows(results, keys, splits)
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        cells = [r["method"] if i == 0 or rows[i - 1]["method"] != r["method"] else "", *list(r.values())[1:]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def scores_text(results: Results, keys: Sequence[str] = HEADLINE) -> str:
    """The CLI's table of the headline metrics per method and coverage split ("" without any)."""
    rows = score_rows(results, keys, std=False)
    if not rows:
        return ""
    head = list(rows[0])
    widths = [max(len(str(r[h])) for r in [dict(zip(head, head, strict=True)), *rows]) + 2 for h in head]
    widths[0] = max(widths[0], 12)

    def line(cells: Sequence[Any]) -> str:
        return "".join(f"{c:{'<' if j < 2 else '>'}{w}}" for j, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(head), "-" * sum(widths)]
    for i, r in enumerate(rows):
        cells = list(r.values())
        if i and rows[i - 1]["method"] == r["method"]:
            cells[0] = ""
        out.append(line(cells))
    return "\n".join(out)


def per_class_markdown(results: Results, keys: Sequence[str] = ("mAD", "deletion-blur", "insertion-blur",
                                                                   "ROAD-keep@20")) -> str:
    """Per predicted class, each method's value of ``keys`` (all unseen images of that class)."""
    methods = [m for m in results.methods if m.per_class]
    if not methods:
        return ""
    classes = sorted({c for m in methods for c in m.per_class or {}}, key=lambda c: (len(c), c))
    cols = [k for k in keys if any(k in (m.per_class or {}).get(c, {}) for m in methods for c in classes)]
    head = ["class", "method", *(f"{k} {direction(k)}" for k in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in classes:
        for j, m in enumerate(methods):
            vals = (m.per_class or {}).get(c, {})
            cells = [c if j == 0 else "", m.method,
                     *("–" if not np.isfinite(vals.get(k, np.nan)) else f"{vals[k]:.2f}" for k in cols)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
