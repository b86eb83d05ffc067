"""mtilib.stats against scipy and against cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mtilib.stats import bootstrap_mean_ci, collapse_reason, mcnemar_exact, paired_comparison


def test_bootstrap_interval_agrees_with_scipy_and_the_normal_approximation():
    x = np.random.default_rng(0).normal(0.8, 0.1, size=70)
    ours = bootstrap_mean_ci(x, n_boot=8000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=8000, method="percentile",
                        rng=np.random.default_rng(2)).confidence_interval
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert ours["mean"] == pytest.approx(x.mean())
    for mine, theirs, normal in ((ours["low"], ref.low, x.mean() - half), (ours["high"], ref.high, x.mean() + half)):
        assert abs(mine - theirs) < 0.1 * half  # Monte-Carlo error of two independent bootstraps
        assert abs(mine - normal) < 0.15 * half
    constant = bootstrap_mean_ci([0.5] * 10)
    assert constant["low"] == constant["high"] == constant["mean"] == 0.5


def test_grouped_bootstrap_resamples_whole_cases():
    """Three identical seeds per case: resampling cases must give exactly the interval of the
    case means (the same draws), not the three-times-too-narrow interval of 3n independent values."""
    rng = np.random.default_rng(3)
    per_case = rng.normal(size=40)
    cases = np.arange(40)
    grouped = bootstrap_mean_ci(np.repeat(per_case, 3), groups=np.repeat(cases, 3), seed=5)
    plain = bootstrap_mean_ci(per_case, seed=5)
    assert (grouped["low"], grouped["high"]) == pytest.approx((plain["low"], plain["high"]), abs=1e-12)
    assert grouped["n"] == 120 and grouped["n_groups"] == 40
    naive = bootstrap_mean_ci(np.repeat(per_case, 3), seed=5)
    assert naive["high"] - naive["low"] < 0.7 * (grouped["high"] - grouped["low"])
    with pytest.raises(ValueError, match="labels"):
        bootstrap_mean_ci(per_case, groups=cases[:10])


def test_paired_comparison_matches_scipy_wilcoxon():
    rng = np.random.default_rng(4)
    a = rng.uniform(0.6, 0.95, size=70)
    b = a + rng.normal(0.02, 0.03, size=70)
    out = paired_comparison(a, b, seed=0)
    assert out["diff"] == pytest.approx(np.mean(b - a))
    assert out["p_wilcoxon"] == pytest.approx(sps.wilcoxon(b - a).pvalue)
    assert out["low"] < out["diff"] < out["high"]
    same = paired_comparison(a, a)
    assert same["p_wilcoxon"] == 1.0 and same["diff"] == 0.0
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison(a, b[:-1])


def test_mcnemar_exact_on_a_hand_computed_table():
    # 1 case only a gets right, 9 only b, 60 both, 0 neither: p = 2 · P(X <= 1 | n=10, 1/2) = 22/1024
    a = [True] * 1 + [False] * 9 + [True] * 60
    b = [False] * 1 + [True] * 9 + [True] * 60
    out = mcnemar_exact(a, b)
    assert (out["only_a"], out["only_b"], out["n"]) == (1, 9, 70)
    assert out["p_mcnemar"] == pytest.approx(22 / 1024)
    assert mcnemar_exact(a, a)["p_mcnemar"] == 1.0


def test_collapse_reason_names_constant_outputs_and_passes_working_ones():
    truth = np.random.default_rng(6).uniform(0, 2, size=(70, 3))
    assert "class 6" in collapse_reason(pred_classes=[6] * 70)
    assert collapse_reason(pred_classes=np.arange(70) % 7) is None
    assert "nearly constant" in collapse_reason(pred_enhancement=np.full((70, 3), 0.9) + 1e-4 * truth,
                                                true_enhancement=truth)
    assert collapse_reason(pred_enhancement=truth + 0.1, true_enhancement=truth) is None
    assert "no lesion" in collapse_reason(lesion_found=[False] * 69 + [True])
    both = collapse_reason(pred_classes=[2] * 70, lesion_found=[False] * 70)
    assert "class 2" in both and "no lesion" in both
