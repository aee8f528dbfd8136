"""Metrics against slow, obvious references written here (brute-force threshold sweeps, pairwise counts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from cltm.probes import metrics

SCORE_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cltm_framework_sv_scores.tsv"


# ---------------------------------------------------------------- slow references


def ref_points(y, s):
    """Operating points by brute force: reject-nothing, then reject scores <= t for every distinct t."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    tar, non = s[y], s[~y]
    pm, pf, th = [0.0], [1.0], [-np.inf]
    for t in sorted(set(s.tolist())):  # every distinct score as a threshold, counted from scratch
        pm.append(np.count_nonzero(tar <= t) / len(tar))
        pf.append(np.count_nonzero(non > t) / len(non))
        th.append(t)
    return np.array(pm), np.array(pf), np.array(th)


def ref_eer(y, s):
    pm, pf, _ = ref_points(y, s)
    for k in range(1, len(pm)):
        if pm[k] >= pf[k]:
            # solve pm0 + a (pm1 - pm0) = pf0 + a (pf1 - pf0) on the segment
            d = (pm[k] - pm[k - 1]) - (pf[k] - pf[k - 1])
            a = (pf[k - 1] - pm[k - 1]) / d if d > 0 else 0.0
            return pm[k - 1] + a * (pm[k] - pm[k - 1])
    raise AssertionError("no crossing")


def ref_min_dcf(y, s, p=0.01, cm=1.0, cf=1.0):
    pm, pf, _ = ref_points(y, s)
    return min(cm * p * a + cf * (1 - p) * b for a, b in zip(pm, pf, strict=True)) / min(cm * p, cf * (1 - p))


def ref_auc(y, s):
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    wins = 0.0
    for a in s[y]:
        for b in s[~y]:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (y.sum() * (~y).sum())


def ref_macro_f1(t, p):
    classes = sorted(set(t) | set(p))
    f1s = []
    for c in classes:
        tp = sum(1 for a, b in zip(t, p, strict=True) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p, strict=True) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p, strict=True) if a == c and b != c)
        f1s.append(0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def ref_uar(t, p):
    recalls = []
    for c in sorted(set(t)):
        idx = [i for i, a in enumerate(t) if a == c]
        recalls.append(sum(1 for i in idx if p[i] == c) / len(idx))
    return sum(recalls) / len(recalls)


# ---------------------------------------------------------------- data


def tied_scores(seed, n=400, decimals=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + 1.2 * y, decimals)
    return y, s


def real_scores():
    if not SCORE_FILE.exists():
        pytest.fail(
            f"real score file missing: {SCORE_FILE}. Put the shared/ folder beside the repository "
            "(it holds data/cltm_framework_sv_scores.tsv)."
        )
    df = pl.read_csv(SCORE_FILE, separator="\t")
    return df["label"].to_numpy(), df["score"].to_numpy()


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_detection_metrics_match_brute_force_with_ties(seed, decimals):
    y, s = tied_scores(seed, decimals=decimals)
    assert metrics.eer(y, s) == pytest.approx(ref_eer(y, s), abs=1e-12)
    for p in (0.01, 0.05, 0.5):
        assert metrics.min_dcf(y, s, p_target=p) == pytest.approx(ref_min_dcf(y, s, p), abs=1e-12)
    assert metrics.min_dcf(y, s, 0.05, c_miss=10, c_fa=1) == pytest.approx(
        ref_min_dcf(y, s, 0.05, 10, 1), abs=1e-12
    )
    assert metrics.roc_auc(y, s) == pytest.approx(ref_auc(y, s), abs=1e-12)
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    summary = metrics.verification_metrics(y, s)
    assert summary["eer"] == metrics.eer(y, s)
    assert summary["min_dcf_01"] == metrics.min_dcf(y, s, 0.01)
    assert summary["min_dcf_05"] == metrics.min_dcf(y, s, 0.05)
    assert summary["auc"] == metrics.roc_auc(y, s)


def test_det_curve_matches_brute_force_and_sklearn_roc():
    y, s = tied_scores(3)
    p_fa, p_miss, thr = metrics.det_curve(y, s)
    pm, pf, th = ref_points(y, s)
    np.testing.assert_allclose(p_miss, pm[1:])
    np.testing.assert_allclose(p_fa, pf[1:])
    np.testing.assert_array_equal(thr, th[1:])
    # sklearn accepts score >= threshold, so its points are ours shifted by one distinct score
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr[1:][::-1], pf[:-1])
    np.testing.assert_allclose(1 - tpr[1:][::-1], pm[:-1])


def test_eer_threshold_is_at_the_crossing():
    y, s = tied_scores(4, decimals=3)
    value, threshold = metrics.eer(y, s, return_threshold=True)
    s_sorted = np.unique(s)
    # the operating points just below and above the threshold bracket the EER
    below = s_sorted[s_sorted <= threshold].max()
    above = s_sorted[s_sorted > threshold].min()

    def rates(t):
        return np.mean(s[y == 1] <= t), np.mean(s[y == 0] > t)

    pm_below, pf_below = rates(below)
    pm_above, pf_above = rates(above)
    assert pm_below < pf_below and pm_above >= pf_above  # the crossing lies between them
    assert pm_below <= value <= pf_below
    assert pf_above <= value <= pm_above


def test_min_dcf_threshold_reaches_the_minimum():
    y, s = tied_scores(5, decimals=2)
    value, threshold = metrics.min_dcf(y, s, 0.05, return_threshold=True)
    pm = np.mean(s[y == 1] <= threshold)
    pf = np.mean(s[y == 0] > threshold)
    assert (0.05 * pm + 0.95 * pf) / 0.05 == pytest.approx(value, abs=1e-12)


def test_real_score_file():
    y, s = real_scores()
    assert len(y) == 3850
    assert metrics.eer(y, s) == pytest.approx(ref_eer(y, s), abs=1e-12)
    assert metrics.min_dcf(y, s, 0.01) == pytest.approx(ref_min_dcf(y, s, 0.01), abs=1e-12)
    assert metrics.min_dcf(y, s, 0.05) == pytest.approx(ref_min_dcf(y, s, 0.05), abs=1e-12)
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # the sklearn-style EER (nearest point, mean of the two rates) agrees to within one trial's worth of rate
    fpr, tpr, _ = roc_curve(y, s)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    step = 1 / min(y.sum(), (1 - y).sum())
    assert abs(metrics.eer(y, s) - (fpr[i] + 1 - tpr[i]) / 2) <= step


@pytest.mark.parametrize(
    "transform",
    [lambda x: 3 * x - 7, np.exp, np.arctan, lambda x: x**3 + x, lambda x: 1 / (1 + np.exp(-x))],
)
def test_invariant_under_increasing_transforms(transform):
    y, s = tied_scores(6, decimals=2)
    t = transform(s)
    assert len(np.unique(t)) == len(np.unique(s))  # the transform kept ties and distinct values as they were
    assert metrics.eer(y, t) == pytest.approx(metrics.eer(y, s), abs=1e-12)
    assert metrics.min_dcf(y, t) == pytest.approx(metrics.min_dcf(y, s), abs=1e-12)
    assert metrics.roc_auc(y, t) == pytest.approx(metrics.roc_auc(y, s), abs=1e-12)


def test_independent_of_trial_order():
    y, s = tied_scores(7)
    perm = np.random.default_rng(0).permutation(len(y))
    assert metrics.eer(y[perm], s[perm]) == metrics.eer(y, s)
    assert metrics.min_dcf(y[perm], s[perm]) == metrics.min_dcf(y, s)


def test_perfect_and_reversed_systems():
    y = np.array([0, 0, 1, 1])
    assert metrics.eer(y, [0.0, 1, 2, 3]) == 0.0
    assert metrics.roc_auc(y, [0.0, 1, 2, 3]) == 1.0
    assert metrics.min_dcf(y, [0.0, 1, 2, 3]) == 0.0
    assert metrics.eer(y, [3.0, 2, 1, 0]) == 1.0
    assert metrics.roc_auc(y, [3.0, 2, 1, 0]) == 0.0
    # all scores tied: AUC 0.5, EER 0.5, minDCF 1 (no better than a trivial system)
    assert metrics.roc_auc(y, [1.0] * 4) == 0.5
    assert metrics.eer(y, [1.0] * 4) == 0.5
    assert metrics.min_dcf(y, [1.0] * 4) == 1.0


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "length mismatch"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "only one class"),
        ([0, 0], [0.1, 0.2], "only one class"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be in"),
        ([0, 1, -1], [0.1, 0.2, 0.3], "labels must be in"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite"),
        ([0, 1, 1], [0.1, np.inf, 0.3], "finite"),
        ([], [], "empty"),
        (["a", "b"], [0.1, 0.2], "labels must be 0/1"),
    ],
)
def test_bad_input_raises_clear_error(y, s, message):
    for fn in (metrics.eer, metrics.min_dcf, metrics.roc_auc, metrics.det_curve):
        with pytest.raises(ValueError, match=message):
            fn(y, s)


def test_bad_costs_raise():
    with pytest.raises(ValueError, match="p_target"):
        metrics.min_dcf([0, 1], [0.0, 1.0], p_target=1.5)
    with pytest.raises(ValueError, match="costs"):
        metrics.min_dcf([0, 1], [0.0, 1.0], c_fa=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3).map(float)), min_size=2, max_size=30).filter(
        lambda pairs: len({p[0] for p in pairs}) == 2
    )
)
def test_hypothesis_edge_cases_against_reference(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    assert metrics.eer(y, s) == pytest.approx(ref_eer(y, s), abs=1e-12)
    assert metrics.roc_auc(y, s) == pytest.approx(ref_auc(y, s), abs=1e-12)
    assert metrics.min_dcf(y, s, 0.1) == pytest.approx(ref_min_dcf(y, s, 0.1), abs=1e-12)
    e = metrics.eer(y, s)
    assert 0.0 <= e <= 1.0
    assert 0.0 <= metrics.min_dcf(y, s) <= 1.0 + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abcd")), min_size=1, max_size=40))
def test_classification_metrics_against_reference(pairs):
    t = [p[0] for p in pairs]
    p = [p[1] for p in pairs]
    assert metrics.accuracy(t, p) == pytest.approx(sum(a == b for a, b in pairs) / len(pairs))
    assert metrics.macro_f1(t, p) == pytest.approx(ref_macro_f1(t, p))
    assert metrics.uar(t, p) == pytest.approx(ref_uar(t, p))
    assert metrics.classification_metrics(t, p) == pytest.approx(
        {"f1": ref_macro_f1(t, p), "accuracy": metrics.accuracy(t, p), "uar": ref_uar(t, p)}
    )


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 5, 300))
    assert metrics.macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
    assert metrics.uar(t, p) == pytest.approx(balanced_accuracy_score(t, p))


def test_classification_bad_input():
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        metrics.macro_f1([], [])
    with pytest.raises(ValueError, match="NaN"):
        metrics.uar([0.0, np.nan], [0.0, 1.0])
