"""Statistics for comparing networks case by case (``make results``, DESIGN "Evidence").

Everything here works on per-case values of two networks evaluated on the same test cases (pairs
``a[i]``, ``b[i]`` belong to one case, or one case under one training seed):

- :func:`bootstrap_mean_ci`: the mean with a percentile-bootstrap confidence interval; with
  ``groups`` (case ids) it resamples whole cases, so that the seeds of one case, which are not
  independent, stay together (a cluster bootstrap);
- :func:`paired_comparison`: mean difference ``b − a`` with its bootstrap interval and the
  Wilcoxon signed-rank test (scipy) for continuous values such as Dice or an absolute error;
- :func:`mcnemar_exact`: McNemar's exact test for paired right/wrong outcomes (classification);
- :func:`collapse_reason`: whether a network's outputs collapsed to a constant, so that a table
  reports it as failed instead of averaging it as a result.

Only numpy and scipy; no torch. Layer: beside :mod:`mtilib.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Default number of bootstrap resamples and confidence level.
N_BOOTSTRAP = 4000
CONFIDENCE = 0.95


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: values must be finite")
    return arr


def _resampled_means(values: np.ndarray, groups, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` bootstrap resamples of ``values``: of the values themselves, or of whole
    groups (every value of a drawn group enters; groups are drawn with replacement)."""
    if groups is None:
        index = rng.integers(0, values.size, size=(n_boot, values.size))
        return values[index].mean(axis=1)
    labels, inverse = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    if inverse.size != values.size:
        raise ValueError(f"groups has {inverse.size} labels for {values.size} values")
    sums = np.bincount(inverse, weights=values, minlength=labels.size)
    counts = np.bincount(inverse, minlength=labels.size).astype(np.float64)
    drawn = rng.integers(0, labels.size, size=(n_boot, labels.size))
    return sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)


def bootstrap_mean_ci(values: Sequence[float], groups: Sequence | None = None, n_boot: int = N_BOOTSTRAP,
                      confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    ``groups``: one label per value (e.g. the case id when several seeds evaluated each case);
    whole groups are resampled. Returns ``{"mean", "low", "high", "n", "n_groups"}``; a constant
    sample gives ``low == high == mean``.
    """
    x = _as_1d(values, "values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    means = _resampled_means(x, groups, n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    n_groups = x.size if groups is None else int(np.unique(np.asarray(groups)).size)
    return {"mean": float(x.mean()), "low": float(low), "high": float(high), "n": int(x.size),
            "n_groups": n_groups}


def paired_comparison(a: Sequence[float], b: Sequence[float], groups: Sequence | None = None,
                      n_boot: int = N_BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """Compare paired per-case values ``b`` against ``a`` (e.g. a baseline's Dice against MTI-Net's).

    Returns ``{"mean_a", "mean_b", "diff", "low", "high", "p_wilcoxon", "n"}``: ``diff`` is the
    mean of ``b − a`` with its bootstrap interval (``groups`` as in :func:`bootstrap_mean_ci`);
    ``p_wilcoxon`` the two-sided Wilcoxon signed-rank p-value (scipy's default: zero differences
    dropped), 1.0 when every difference is zero.
    """
    from scipy import stats

    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must pair up: {x.size} and {y.size} values")
    d = y - x
    ci = bootstrap_mean_ci(d, groups, n_boot, confidence, seed)
    p = 1.0 if not np.any(d != 0) else float(stats.wilcoxon(y, x).pvalue)
    return {"mean_a": float(x.mean()), "mean_b": float(y.mean()), "diff": ci["mean"], "low": ci["low"],
            "high": ci["high"], "p_wilcoxon": p, "n": int(x.size)}


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """McNemar's exact test on paired right/wrong outcomes of two classifiers on the same cases.

    Only discordant pairs count: ``only_a`` (a right, b wrong) and ``only_b``; under the null both
    are equally likely, so ``p`` is the two-sided binomial test of ``only_b`` out of
    ``only_a + only_b`` at 1/2 (1.0 without discordant pairs). Also returns both accuracies.
    """
    from scipy import stats

    x = np.asarray(correct_a, dtype=bool).reshape(-1)
    y = np.asarray(correct_b, dtype=bool).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"correct_a and correct_b must pair up: {x.size} and {y.size} outcomes")
    only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_b, n, 0.5).pvalue)
    return {"accuracy_a": float(x.mean()), "accuracy_b": float(y.mean()), "only_a": only_a, "only_b": only_b,
            "p_mcnemar": p, "n": int(x.size)}


def collapse_reason(pred_classes: Sequence[int] | None = None, pred_enhancement=None,
                    true_enhancement=None, lesion_found: Sequence[bool] | None = None,
                    majority_share: float = 0.9, spread_ratio: float = 0.05) -> str | None:
    """Why a network's test outputs count as collapsed, or ``None`` when they do not.

    - classification: one class predicted for at least ``majority_share`` of the cases;
    - regression: the predictions' spread across cases (standard deviation, mean over phases) is
      below ``spread_ratio`` of the truth's, i.e. nearly the same curve for every lesion;
    - segmentation: no lesion found in at least ``majority_share`` of the cases.

    Each check runs only for the outputs given; reasons found are joined with "; ".
    """
    reasons = []
    if pred_classes is not None:
        classes = np.asarray(pred_classes).reshape(-1)
        if classes.size:
            values, counts = np.unique(classes, return_counts=True)
            share = counts.max() / classes.size
            if share >= majority_share:
                reasons.append(f"predicts class {int(values[counts.argmax()])} for {share:.0%} of the cases")
    if pred_enhancement is not None and true_enhancement is not None:
        pred = np.asarray(pred_enhancement, dtype=np.float64).reshape(len(pred_enhancement), -1)
        true = np.asarray(true_enhancement, dtype=np.float64).reshape(len(true_enhancement), -1)
        if len(pred) > 1:
            spread, truth = pred.std(axis=0).mean(), true.std(axis=0).mean()
            if truth > 0 and spread < spread_ratio * truth:
                reasons.append(f"enhancement nearly constant (spread {spread:.3f} vs {truth:.3f} in truth)")
    if lesion_found is not None:
        found = np.asarray(lesion_found, dtype=bool).reshape(-1)
        if found.size and 1 - found.mean() >= majority_share:
            reasons.append(f"finds no lesion in {1 - found.mean():.0%} of the cases")
    return "; ".join(reasons) or None
