r"""Every faithfulness score of one method's reused maps on the unseen images, per image, and their
summaries split by RI's coverage: what ``evaluation.metrics`` selects (:data:`repint.metrics.METRICS`).

For an unseen image ``e`` of predicted class ``c`` with ``Y = softmax(f(e))_c``, the method's map reused
on ``e`` and its keep-mask ``K_f`` of the ``f`` share kept (exactly ``round(f·H·W)`` top pixels, ties by
index; ACE: whole segments), the per-image columns are:

- ``ad-ai``: ``Y'_f = softmax(f(e ⊙ K_f))_c``, the rest black, at each ``f`` of ``keep_fractions``;
  ``AD@f = 100·mean max(0, Y - Y'_f) / Y`` (lower is better), ``AI@f = 100·mean [Y < Y'_f]`` (higher).
- ``deletion-insertion`` (RISE, Petsiuk et al. 2018): the probability of ``c`` while the map's top
  ``t/T`` pixels are replaced by a baseline (deletion) or put onto it (insertion), ``t = 0..T``;
  score ``100·AUC`` over ``[0, 1]`` (deletion: lower is better; insertion: higher), per baseline
  (black, or the image blurred: no new colour edges).
- ``road`` (Rong et al., ICML 2022): as ``ad-ai``, but the removed pixels are filled by noisy linear
  imputation from their neighbours instead of black, which removes the class information a black
  mask's shape leaks. ``ROAD-keep@f`` keeps ``K_f``: its drop ``100·mean max(0, Y - Y')/Y`` (lower is
  better); ``ROAD-remove@f`` removes ``K_f``: the same drop (higher is better).
- ``representativeness`` (the paper's Sec. 6.3 claim): how alike an interpretation's maps are on the
  images it is reused on, ``ρ_v`` = mean pairwise Spearman correlation of the reused maps of the
  images assigned to interpretation ``v`` (at most 64 per interpretation, on 16x16 thumbnails);
  ``rank-agreement`` = mean of ``ρ_v`` over the interpretations with at least two images (higher).

Every table splits each score by RI's coverage: on the unseen images some polytope of their class
covers (``covered``), on those that fall back (``uncovered``), and on all (the paper's number); the
baselines are split by the same images, so the columns compare like with like (an RI variant with
polytopes of its own, in a store of its own, is split by its own coverage).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repint import fidelity
from repint.metrics import mask_images, softmax

__all__ = ["HIGHER_IS_BETTER", "ScoreSettings", "mean_curves", "metric_keys", "per_image_columns", "score_images",
           "summarise_scores"]

Forward = Callable[[np.ndarray], np.ndarray]
SPLITS = ("all", "covered", "uncovered")


def _pct(f: float) -> str:
    return f"{100 * f:g}"


@dataclass(frozen=True)
class ScoreSettings:
    """What is scored: the selected metrics, the kept shares, the curves' steps and baselines."""

    metrics: tuple[str, ...]
    fractions: tuple[float, ...]
    steps: int
    baselines: tuple[str, ...]
    batch: int = 128
    seed: int = 0

    @classmethod
    def of(cls, evaluation: Any, batch: int, seed: int = 0) -> ScoreSettings:
        """From an ``EvaluationConfig``."""
        return cls(tuple(evaluation.metrics), tuple(evaluation.keep_fractions), int(evaluation.curve_steps),
                   tuple(evaluation.baselines), batch, seed)

    @property
    def curves(self) -> list[tuple[str, str]]:
        """``(mode, baseline)`` of each stored curve, in order."""
        if "deletion-insertion" not in self.metrics:
            return []
        return [(mode, b) for b in self.baselines for mode in ("deletion", "insertion")]

    def sizes(self, height: int, width: int) -> dict[str, int]:
        """The stage's dimensions: ``F`` kept shares, ``G`` curves of ``T`` points, thumbnails ``th x tw``."""
        thumb = "representativeness" in self.metrics
        return {"F": len(self.fractions) if ("ad-ai" in self.metrics or "road" in self.metrics) else 0,
                "G": len(self.curves), "T": self.steps + 1 if self.curves else 0,
                "th": min(height, 16) if thumb else 0, "tw": min(width, 16) if thumb else 0}

    def fingerprint(self) -> tuple[Any, ...]:
        """What changes the per-image columns (a setting a selected metric does not use is left out)."""
        shares = "ad-ai" in self.metrics or "road" in self.metrics
        return ("scores-v1", self.metrics, self.fractions if shares else None, self.steps if self.curves else None,
                self.baselines if self.curves else None, self.seed if "road" in self.metrics else None)


def _probabilities(forward: Forward, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return softmax(forward(images))[np.arange(len(images)), classes] if len(images) else np.zeros(0)


def score_images(forward: Forward, images: np.ndarray, classes: np.ndarray, y: np.ndarray, maps: np.ndarray,
                 masks: np.ndarray, settings: ScoreSettings, first: int = 0) -> dict[str, np.ndarray]:
    """The per-image columns of the selected metrics for ``images`` ``[n, C, H, W]`` in pixel space,
    their classes ``[n]`` and ``Y`` ``[n]``, the reused ``maps`` ``[n, H, W]`` and keep-masks ``masks``
    ``[F, n, H, W]`` (one per kept share): ``y_kept`` / ``road_keep`` / ``road_remove`` ``[n, F]``,
    ``curves`` ``[n, G, T]``, ``thumb`` ``[n, th, tw]`` (absent metrics: zero-width arrays). ``first`` is
    the index of ``images[0]`` in the unseen set: ROAD's noise of image ``e`` at share ``i`` is drawn
    from ``default_rng([seed, e, i, keep/remove])``, whatever the chunking."""
    n, s = len(images), settings
    size = s.sizes(*images.shape[-2:])
    out = {"y_kept": np.full((n, size["F"]), np.nan), "road_keep": np.full((n, size["F"]), np.nan),
           "road_remove": np.full((n, size["F"]), np.nan), "curves": np.full((n, size["G"], size["T"]), np.nan),
           "thumb": np.zeros((n, size["th"], size["tw"]), np.float32)}
    if n == 0:
        return out
    index = first + np.arange(n)
    for i, keep in enumerate(masks if size["F"] else ()):
        if "ad-ai" in s.metrics:
            out["y_kept"][:, i] = _probabilities(forward, mask_images(images, keep), classes)
        if "road" in s.metrics:
            for name, removed, mode in (("road_keep", ~keep, 0), ("road_remove", keep, 1)):
                seeds = [(s.seed, int(e), i, mode) for e in index]
                imputed = fidelity.road_impute(images, removed, seeds=seeds).astype(images.dtype, copy=False)
                out[name][:, i] = _probabilities(forward, imputed, classes)
    y_baseline: dict[str, np.ndarray] = {}
    for g, (mode, baseline) in enumerate(s.curves):
        if baseline not in y_baseline:  # the end of deletion is the start of insertion: one forward
            y_baseline[baseline] = _probabilities(forward, fidelity.baseline_images(images, baseline), classes)
        out["curves"][:, g] = fidelity.perturbation_curves(forward, images, maps, classes, mode=mode,
                                                           baseline=baseline, steps=s.steps, batch=s.batch,
                                                           y_full=y, y_baseline=y_baseline[baseline])
    if size["th"]:
        out["thumb"] = fidelity.thumbnail(maps)
    return out


def per_image_columns(rec: Mapping[str, np.ndarray], settings: ScoreSettings) -> dict[str, np.ndarray]:
    """The per-image values behind the summary, as ``records.csv`` columns: ``Y_kept@f``,
    ``Y_ROAD-keep@f``, ``Y_ROAD-remove@f`` (probabilities of the class) and ``AUC_<mode>-<baseline>``."""
    out: dict[str, np.ndarray] = {}
    for i, f in enumerate(settings.fractions if "ad-ai" in settings.metrics else ()):
        out[f"Y_kept@{_pct(f)}"] = rec["y_kept"][:, i]
    for i, f in enumerate(settings.fractions if "road" in settings.metrics else ()):
        out[f"Y_ROAD-keep@{_pct(f)}"] = rec["road_keep"][:, i]
        out[f"Y_ROAD-remove@{_pct(f)}"] = rec["road_remove"][:, i]
    for g, (mode, b) in enumerate(settings.curves):
        out[f"AUC_{mode}-{b}"] = fidelity.curve_auc(rec["curves"][:, g]) if len(rec["curves"]) else np.zeros(0)
    return out


def metric_keys(settings: ScoreSettings) -> list[str]:
    """The summary's metrics, in table order: ``AD@20``, ``AI@20``, ..., ``deletion-blur``, ..."""
    keys: list[str] = ["mAD", "mAI"]
    if "ad-ai" in settings.metrics:
        keys += [f"{m}@{_pct(f)}" for f in settings.fractions for m in ("AD", "AI")]
    keys += [f"{mode}-{b}" for mode, b in settings.curves]
    if "road" in settings.metrics:
        keys += [f"ROAD-{m}@{_pct(f)}" for f in settings.fractions for m in ("keep", "remove")]
    if "representativeness" in settings.metrics:
        keys.append("rank-agreement")
    return keys


#: whether a metric (by its name before ``@``) is better when higher
HIGHER_IS_BETTER: dict[str, bool] = {"mAD": False, "mAI": True, "AD": False, "AI": True,
                                     "deletion-black": False, "deletion-blur": False,
                                     "insertion-black": True, "insertion-blur": True, "ROAD-keep": False,
                                     "ROAD-remove": True, "rank-agreement": True}


def _drop(y: np.ndarray, ym: np.ndarray) -> float:
    return float(100 * np.mean(np.maximum(0.0, y - ym) / y)) if len(y) else float("nan")


def _agreement(thumbs: np.ndarray, groups: np.ndarray) -> float:
    per = fidelity.pairwise_rank_agreement(thumbs, groups)
    values = [v for v, count in per.values() if count >= 2 and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _scores(rec: Mapping[str, np.ndarray], sel: np.ndarray, settings: ScoreSettings) -> dict[str, float]:
    y = rec["y"][sel]
    ym = rec["y_masked"][sel]
    out: dict[str, float] = {"mAD": _drop(y, ym), "mAI": float(100 * np.mean(y < ym)) if len(y) else float("nan")}
    for i, f in enumerate(settings.fractions if "ad-ai" in settings.metrics else ()):
        ym = rec["y_kept"][sel, i]
        out[f"AD@{_pct(f)}"] = _drop(y, ym)
        out[f"AI@{_pct(f)}"] = float(100 * np.mean(y < ym)) if len(y) else float("nan")
    for g, (mode, b) in enumerate(settings.curves):
        auc = fidelity.curve_auc(rec["curves"][sel, g])
        out[f"{mode}-{b}"] = float(100 * auc.mean()) if len(auc) else float("nan")
    for i, f in enumerate(settings.fractions if "road" in settings.metrics else ()):
        out[f"ROAD-keep@{_pct(f)}"] = _drop(y, rec["road_keep"][sel, i])
        out[f"ROAD-remove@{_pct(f)}"] = _drop(y, rec["road_remove"][sel, i])
    if "representativeness" in settings.metrics:
        out["rank-agreement"] = _agreement(rec["thumb"][sel], rec["centre"][sel])
    return out


def _finite(scores: dict[str, float]) -> dict[str, float | None]:
    """``None`` for what cannot be computed (an empty split, no interpretation with two images): valid
    JSON, and equal to itself when a re-run's summary is compared with the first's."""
    return {k: (v if np.isfinite(v) else None) for k, v in scores.items()}


def summarise_scores(rec: Mapping[str, np.ndarray], covered: np.ndarray, classes: np.ndarray,
                     settings: ScoreSettings) -> dict[str, Any]:
    """The summary of one method's per-image columns ``rec`` (``y``, ``centre`` and those of
    :func:`score_images`, ``y_masked`` at ``keep_fraction``): ``{"metrics": {key: {"all", "covered",
    "uncovered"}}, "per_class": {class: {key: value}}, "n_covered", "n_uncovered"}``; ``covered`` ``[n]``
    is RI's coverage."""
    covered = np.asarray(covered, bool)
    splits = {"all": np.ones_like(covered), "covered": covered, "uncovered": ~covered}
    by_split = {name: _finite(_scores(rec, sel, settings)) for name, sel in splits.items()}
    metrics = {k: {name: by_split[name][k] for name in SPLITS} for k in metric_keys(settings)}
    per_class = {str(int(c)): _finite(_scores(rec, classes == c, settings)) for c in np.unique(classes)}
    return {"metrics": metrics, "per_class": per_class, "n_covered": int(covered.sum()),
            "n_uncovered": int((~covered).sum())}


def mean_curves(curves: np.ndarray, names: Sequence[tuple[str, str]]) -> dict[str, list[float]]:
    """The mean curve of each ``(mode, baseline)``, for the report's plots."""
    if not len(curves):
        return {}
    return {f"{m}-{b}": np.nanmean(curves[:, g], axis=0).round(5).tolist() for g, (m, b) in enumerate(names)}
