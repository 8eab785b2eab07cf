"""The faithfulness parts of ``report.html`` (:mod:`repint.tasks.html`): every metric per method and
RI-coverage split with the best value of each column in bold, the mean deletion / insertion curves
drawn per kind, and the per-class table. Each returns an empty result where the summary has no such
numbers (an old summary, ``evaluation.metrics: []``), and the template then leaves the section out."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from repint.results import MethodResult, Results
from repint.scoretable import direction, score_keys, score_rows
from repint.scoring import HIGHER_IS_BETTER, SPLITS

__all__ = ["CURVE_KINDS", "PER_CLASS_KEYS", "curve_figures", "figure_data_uri", "per_class_table",
           "png_data_uri", "score_table"]

#: the mean curves drawn, in this order (those a run has)
CURVE_KINDS = ("deletion-black", "insertion-black", "deletion-blur", "insertion-blur")
#: the per-class table's metrics (those a run has)
PER_CLASS_KEYS = ("mAD", "deletion-blur", "insertion-blur", "ROAD-keep@20")


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_data_uri(fig: Any, dpi: int = 90) -> str:
    """A matplotlib ``Figure`` (Agg canvas) as a PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return png_data_uri(buf.getvalue())


def _higher(key: str) -> bool:
    return HIGHER_IS_BETTER.get(key.split("@")[0], True)


def _digits(key: str) -> int:
    return 3 if key == "rank-agreement" else 2  # as repint.scoretable shows them


def _best(values: Sequence[float | None], key: str) -> set[int]:
    """Indices of the best finite values (ties as shown, at the shown digits, all count)."""
    shown = {i: round(float(v), _digits(key)) for i, v in enumerate(values)
             if v is not None and math.isfinite(float(v))}
    if len(shown) < 2:  # one method alone is not "best" of anything
        return set()
    best = (max if _higher(key) else min)(shown.values())
    return {i for i, v in shown.items() if v == best}


def score_table(results: Results) -> dict[str, Any] | None:
    """Every metric per method and split (``repint.scoretable.score_rows``): ``headers`` (the metrics
    with ↓/↑) and ``rows`` of ``method``, ``split`` (raw), ``label`` (with its image count), ``first``
    (the method's first row) and ``cells`` (``text``, ``best``: the best of the column within the split)."""
    keys = score_keys(results)
    rows = score_rows(results, keys)
    if not rows or not keys:
        return None
    order = [(m, s) for m in results.methods if m.scores for s in SPLITS]
    best: dict[tuple[str, str], set[str]] = {}
    for split in SPLITS:
        methods = [m for m in results.methods if m.scores]
        for k in keys:
            for i in _best([(m.scores or {}).get(k, {}).get(split) for m in methods], k):
                best.setdefault((methods[i].method, split), set()).add(k)
    table = []
    for (m, split), row in zip(order, rows, strict=True):
        marked = best.get((m.method, split), set())
        table.append({"method": m.method, "split": split, "label": row["split"], "first": split == SPLITS[0],
                      "cells": [{"text": row[f"{k} {direction(k)}"], "best": k in marked} for k in keys]})
    return {"headers": [f"{k} {direction(k)}" for k in keys], "rows": table}


def _curve_figure(kind: str, methods: Sequence[MethodResult]) -> str:
    """One kind's mean curve per method: x the share of pixels removed / inserted, y the class's probability."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 3.0))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)  # fixed margins: tight_layout is slow
    for m in methods:
        y = np.asarray((m.curves or {})[kind], dtype=float)
        auc = (m.scores or {}).get(kind, {}).get("all")
        label = m.method + (f": {auc:.2f}" if auc is not None and math.isfinite(auc) else "")
        ax.plot(np.linspace(0.0, 1.0, len(y)), y, label=label, linewidth=1.4)
    mode, _, baseline = kind.partition("-")
    ax.set_xlabel(f"share of pixels {'removed' if mode == 'deletion' else 'inserted'}", fontsize=8)
    ax.set_ylabel("probability of the class", fontsize=8)
    ax.set_title(f"{mode}, {baseline} baseline", fontsize=9)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper right" if mode == "deletion" else "lower right",
              title="AUC (100·area, all images)", title_fontsize=6)
    return figure_data_uri(fig, dpi=80)


def curve_figures(results: Results) -> list[dict[str, Any]]:
    """Per curve kind a run has: ``kind``, ``uri`` (a small PNG), ``auc`` (method -> the ``all`` score)."""
    out = []
    for kind in CURVE_KINDS:
        methods = [m for m in results.methods if m.curves and len((m.curves or {}).get(kind) or []) > 1]
        if not methods:
            continue
        out.append({"kind": kind, "uri": _curve_figure(kind, methods),
                    "auc": {m.method: (m.scores or {}).get(kind, {}).get("all") for m in methods}})
    return out


def per_class_table(results: Results, class_names: Sequence[str] = (),
                    keys: Sequence[str] = PER_CLASS_KEYS) -> dict[str, Any] | None:
    """Per predicted class and method the value of ``keys`` (those recorded): ``headers`` and ``rows`` of
    ``class`` (id), ``name``, ``method``, ``first`` and ``cells`` (``text``, ``best`` within the class)."""
    methods = [m for m in results.methods if m.per_class]
    if not methods:
        return None
    classes = sorted({c for m in methods for c in m.per_class or {}}, key=lambda c: (len(c), c))
    cols = [k for k in keys if any(k in (m.per_class or {}).get(c, {}) for m in methods for c in classes)]
    if not cols:
        return None
    rows = []
    for c in classes:
        vals = [(m.per_class or {}).get(c, {}) for m in methods]
        best = {k: _best([v.get(k) for v in vals], k) for k in cols}
        name = class_names[int(c)] if c.isdigit() and int(c) < len(class_names) else c
        for j, (m, v) in enumerate(zip(methods, vals, strict=True)):
            cells = []
            for k in cols:
                x = v.get(k)
                ok = x is not None and math.isfinite(float(x))
                cells.append({"text": f"{x:.{_digits(k)}f}" if ok else "–", "best": j in best[k]})
            rows.append({"class": c, "name": name, "method": m.method, "first": j == 0, "cells": cells})
    return {"headers": [f"{k} {direction(k)}" for k in cols], "rows": rows, "n_methods": len(methods)}
