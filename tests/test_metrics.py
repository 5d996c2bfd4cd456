"""ISO/IEC 30107-3 liveness metrics and SRCC/PLCC against values worked out by hand (and scipy where it agrees)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from edgeclip.errors import RuntimeUnavailable, UsageError
from edgeclip.metrics.liveness import (
    ScoreSet,
    apcer_per_species,
    bpcer,
    bpcer_at_apcer,
    choose_threshold,
    eer,
    evaluate,
    operating_point,
    roc_auc,
)
from edgeclip.metrics.quality import fit_logistic4, logistic4, pearson, plcc, srcc

# bona fide 0.3 0.7 0.8 0.9; attacks pooled 0.05 0.1 0.2 0.4 0.75
HAND = ScoreSet(np.array([0.9, 0.8, 0.7, 0.3]), {"print": np.array([0.1, 0.2, 0.75]), "screen": np.array([0.4, 0.05])})


def test_apcer_bpcer_acer_at_a_threshold() -> None:
    # At 0.5: print accepts 0.75 (1 of 3), screen accepts none; bona fide rejects 0.3 (1 of 4).
    point = operating_point(HAND, 0.5)
    assert point.apcer == {"print": pytest.approx(1 / 3), "screen": 0.0}
    assert point.worst_species == "print" and point.worst_apcer == pytest.approx(1 / 3)
    assert point.bpcer == pytest.approx(0.25)
    assert point.acer == pytest.approx((1 / 3 + 0.25) / 2)
    # A score equal to the threshold is accepted as bona fide.
    assert apcer_per_species({"x": np.array([0.4, 0.2])}, 0.4) == {"x": 0.5}
    assert bpcer(np.array([0.4, 0.2]), 0.4) == 0.5


def test_eer_is_interpolated_where_the_rates_cross() -> None:
    # Thresholds 0.4 -> (APCER 2/5, BPCER 1/4) and 0.7 -> (APCER 1/5, BPCER 1/4): APCER - BPCER goes
    # 0.15 -> -0.05, so the crossing is 3/4 of the way: EER = 0.4 - 0.75 * 0.2 = 0.25 at 0.4 + 0.75 * 0.3 = 0.625.
    rate, threshold = eer(HAND)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.625)


def test_eer_exact_and_separable() -> None:
    # Bona fide 0.6 0.8, attacks 0.4 0.7: at 0.7, APCER = 1/2 and BPCER = 1/2 exactly.
    assert eer(ScoreSet(np.array([0.6, 0.8]), {"a": np.array([0.4, 0.7])})) == (0.5, 0.7)
    # Perfectly separated: the EER is 0.
    assert eer(ScoreSet(np.array([0.8, 0.9]), {"a": np.array([0.1, 0.2])}))[0] == pytest.approx(0.0)


def test_roc_auc_counts_ties_as_half() -> None:
    assert roc_auc(HAND) == pytest.approx(17 / 20)
    # pairs: (0.5, 0.5) tie -> 1/2, (0.5 > 0.2), (0.7 > 0.5), (0.7 > 0.2) -> 3.5 / 4
    assert roc_auc(ScoreSet(np.array([0.5, 0.7]), {"a": np.array([0.5, 0.2])})) == pytest.approx(0.875)


def test_bpcer_at_fixed_apcer_holds_every_species() -> None:
    # APCER <= 1% for every species means accepting no attack: threshold above 0.75, so 0.3 and 0.7 are rejected.
    assert bpcer_at_apcer(HAND, 0.01) == pytest.approx(0.5)
    # <= 50% per species: print may accept 1 of 3 and screen 1 of 2, which 0.3 allows with no bona fide lost.
    assert bpcer_at_apcer(HAND, 0.5) == 0.0
    assert choose_threshold(HAND, "apcer@0.01") == pytest.approx(0.8)


def test_threshold_comes_from_dev_and_is_applied_to_test() -> None:
    dev = ScoreSet(np.array([0.6, 0.8]), {"a": np.array([0.4, 0.7])})  # EER threshold 0.7
    test = ScoreSet(np.array([0.65, 0.9, 0.95]), {"a": np.array([0.1, 0.72]), "b": np.array([0.69])})
    report = evaluate(dev, test, "eer")
    assert report.test.threshold == pytest.approx(0.7)
    assert report.test.apcer == {"a": 0.5, "b": 0.0}
    assert report.test.bpcer == pytest.approx(1 / 3)
    assert report.test.acer == pytest.approx((0.5 + 1 / 3) / 2)
    assert report.counts["test"] == {"bona_fide": 3, "a": 2, "b": 1}
    # The dev split at its own threshold, for comparison.
    assert report.dev.apcer == {"a": 0.5} and report.dev.bpcer == 0.5


def test_score_set_from_labels_and_its_errors() -> None:
    s = ScoreSet.from_labels([0.9, 0.1, 0.2, 0.8], ["bona_fide", "print", "replay", "bona_fide"])
    assert s.bona_fide.tolist() == [0.9, 0.8] and set(s.attacks) == {"print", "replay"}
    with pytest.raises(UsageError, match="no bona fide scores"):
        ScoreSet.from_labels([0.1, 0.2], ["print", "replay"])
    with pytest.raises(UsageError, match="no attack scores"):
        ScoreSet.from_labels([0.1, 0.2], ["bona_fide", "bona_fide"])
    with pytest.raises(UsageError, match="NaN"):
        ScoreSet(np.array([math.nan]), {"a": np.array([0.1])})
    with pytest.raises(UsageError, match="unknown threshold rule"):
        choose_threshold(HAND, "median")


def test_srcc_by_hand_and_against_scipy() -> None:
    # y ranks with the tie averaged: 1, 2, 3.5, 5, 3.5; deviations from 3: x -2 -1 0 1 2, y -2 -1 .5 2 .5
    # covariance 8, variances 10 and 9.5 -> 8 / sqrt(95)
    assert srcc([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert srcc([1, 2, 3], [10, 100, 1000]) == pytest.approx(1.0)
    assert srcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 200).astype(float)
    y = x + rng.normal(0, 2, 200)
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)


def test_plcc_with_the_logistic_fit() -> None:
    pred = np.linspace(0, 1, 40)
    mos = logistic4(pred, 5.0, 1.0, 0.5, 0.08)  # an S-curve: monotone but far from linear
    assert srcc(pred, mos) == pytest.approx(1.0)
    raw = plcc(pred, mos, logistic=False)
    fitted = plcc(pred, mos)
    assert raw < 0.97
    assert fitted == pytest.approx(1.0, abs=1e-6)
    fit = fit_logistic4(pred, mos)
    assert fit.params is not None and fit.params[0] == pytest.approx(5.0, abs=1e-3)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ([1, 2, 3], [1, 2], "3 predictions but 2"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, 2, math.inf], [1, 2, 3], "finite"),
    ],
)
def test_correlation_input_errors(x, y, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        srcc(x, y)


def test_without_scipy_plcc_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # as if scipy were not installed
    with pytest.raises(RuntimeUnavailable, match=r"needs scipy: pip install 'edgeclip\[metrics\]'"):
        plcc([1, 2, 3, 4], [1, 3, 2, 4])
    assert plcc([1, 2, 3, 4], [1, 3, 2, 4], logistic=False) == pytest.approx(0.8)
